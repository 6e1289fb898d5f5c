//! Types shared by mailguard's kernel programs (guard-ebpf) and its userspace (guard-userspace).
//! Both sides use these definitions; neither keeps a copy.
#![no_std]

#[cfg(test)]
extern crate std;

pub mod budget;
pub mod features;
pub mod list_index;
pub mod maps;
pub mod policy;
pub mod reason;
pub mod sources;

pub use budget::*;
pub use features::*;
pub use list_index::*;
pub use policy::*;
pub use reason::{COUNTER_SLOTS, Reason, Verdict};
pub use sources::*;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is repr(C) or repr(C, packed), made only of integers and byte arrays,
    // and has no padding (sizes asserted next to the definitions): every bit pattern is valid.
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for OpenSourceV4 {}
    unsafe impl aya::Pod for OpenSourceV6 {}
    unsafe impl aya::Pod for Gcra {}
    unsafe impl aya::Pod for ClassBudget {}
    unsafe impl aya::Pod for BudgetSettings {}
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for SourceState {}
    unsafe impl aya::Pod for SourceSlot {}
    unsafe impl aya::Pod for SourceBucket {}
    unsafe impl aya::Pod for BlockEntry {}
    unsafe impl aya::Pod for V6Bucket {}
    unsafe impl aya::Pod for V6Lengths {}
}
