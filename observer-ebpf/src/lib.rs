#![no_std]
// The programs live in the `observer` binary target; this empty library only
// lets the agent's build script depend on the crate.
