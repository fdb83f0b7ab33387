//! Empty library target: lets `observer` declare a build-dependency on this
//! crate so cargo rebuilds the daemon when the kernel programs change.
#![no_std]
