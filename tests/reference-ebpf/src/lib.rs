#![no_std]
//! Reference XDP programs for mailguard's tests and benchmarks, one to a binary target
//! (`src/bin/`): the benchmarks' floor and memory reference, the lab's XDP_PASS and the SYN
//! flood generator. tests/build.rs builds them, and `guard_tests::reference` embeds them;
//! mailguard itself never holds them. This library target exists so that the test crate can
//! name this one as a build dependency.

/// What every program binary needs besides its program: a panic handler (the verifier
/// allows no panics; this is never reached) and the GPL license the helpers ask for.
#[macro_export]
macro_rules! program_binary {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 4] = *b"GPL\0";
    };
}
