//! Named counters in a fixed order, written as one JSON object.

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{MapAccess, Visitor},
    ser::SerializeMap,
};

/// `name → count` in the order the writer chose (a summary lists every
/// operation in the same order every time), as a JSON object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts(Vec<(String, u64)>);

impl Counts {
    /// Adds `n` to `name`, appending it if new.
    pub fn add(&mut self, name: &str, n: u64) {
        match self.0.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v += n,
            None => self.0.push((name.to_owned(), n)),
        }
    }

    /// The count of `name`; 0 when it is not listed.
    pub fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, v)| v).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: AsRef<str>> FromIterator<(S, u64)> for Counts {
    fn from_iter<I: IntoIterator<Item = (S, u64)>>(iter: I) -> Self {
        let mut c = Counts::default();
        for (k, v) in iter {
            c.add(k.as_ref(), v);
        }
        c
    }
}

impl Serialize for Counts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Counts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Counts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counts, A::Error> {
                let mut c = Counts::default();
                while let Some((k, v)) = map.next_entry::<String, u64>()? {
                    c.add(&k, v);
                }
                Ok(c)
            }
        }
        d.deserialize_map(Ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_writers_order() {
        let c: Counts = [("zeta", 2), ("alpha", 1), ("zeta", 1)]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"zeta":3,"alpha":1}"#);
        let back: Counts = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get("alpha"), 1);
        assert_eq!(back.get("missing"), 0);
        assert_eq!(back.total(), 4);
    }
}
