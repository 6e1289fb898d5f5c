//! What a SYN-ACK made in XDP with a SYN cookie must agree on with the kernel that later turns
//! the cookie into a connection (`Settings::cookies`, `Settings::cookie_mss`): read from the
//! network namespace mailguard runs in each time the settings are written.
//!
//! - Timestamps: the kernel decodes the window scale and SACK permission from the low bits of
//!   the timestamp the client echoes, after taking off a per-connection offset when
//!   `net.ipv4.tcp_timestamps` is 1 (the default). XDP cannot know that offset, so the SYN-ACK
//!   carries timestamps only when the setting is 2 (timestamps without offsets); otherwise the
//!   MSS alone, and the connection goes without timestamps, SACK and window scaling, as the
//!   kernel's own cookies do without timestamps.
//! - Window scale: the one the kernel computes for the new connection from the largest receive
//!   buffer it may use (`tcp_select_initial_window`: `net.ipv4.tcp_rmem`'s maximum or
//!   `net.core.rmem_max`, whichever is larger).
//! - MSS: the interface's MTU less the IPv4 (40) or IPv6 (60) and TCP headers.

use std::path::Path;

use guard_common::{
    COOKIE_WSCALE_SHIFT, COOKIES_ALWAYS, COOKIES_OFF, COOKIES_TIMESTAMPS, COOKIES_UNDER_FLOOD,
};

use crate::config::{Config, budgets::SynCookies};

/// The largest window scale TCP allows (RFC 7323).
const MAX_WSCALE: u32 = 14;

/// What the namespace says, as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieEnv {
    /// `net.ipv4.tcp_timestamps`.
    pub tcp_timestamps: u32,
    /// The larger of `net.ipv4.tcp_rmem`'s maximum and `net.core.rmem_max`, in bytes.
    pub max_rcvbuf: u64,
    /// The interface's MTU.
    pub mtu: u32,
    /// Whether the kernel has `bpf_tcp_gen_syncookie` for XDP (`kernel::features`).
    pub helper: bool,
    /// Whether it has `bpf_tcp_raw_gen_syncookie_*` for XDP (cookies from the SYN alone).
    pub raw: bool,
}

impl CookieEnv {
    /// Reads the namespace's settings and `interface`'s MTU (the kernel's defaults where one
    /// cannot be read).
    pub fn read(interface: Option<&str>) -> CookieEnv {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let tcp_timestamps = read("/proc/sys/net/ipv4/tcp_timestamps")
            .trim()
            .parse()
            .unwrap_or(1);
        let rmem_max: u64 = read("/proc/sys/net/ipv4/tcp_rmem")
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(6_291_456);
        let core_max: u64 = read("/proc/sys/net/core/rmem_max")
            .trim()
            .parse()
            .unwrap_or(0);
        let mtu = interface
            .map(|i| {
                read(
                    &Path::new("/sys/class/net")
                        .join(i)
                        .join("mtu")
                        .to_string_lossy(),
                )
            })
            .and_then(|m| m.trim().parse().ok())
            .unwrap_or(1500);
        let bits = crate::kernel::features::KernelFeatures::probed().bits;
        CookieEnv {
            tcp_timestamps,
            max_rcvbuf: rmem_max.max(core_max),
            mtu,
            helper: bits & guard_common::FEATURE_SYN_COOKIE != 0,
            raw: from_the_syn(),
        }
    }

    /// The window scale the kernel gives a connection made from a cookie.
    pub fn wscale(&self) -> u32 {
        let space = self.max_rcvbuf.clamp(1, u64::from(u32::MAX));
        (space.ilog2().saturating_sub(15)).min(MAX_WSCALE)
    }
}

/// Whether the running kernel lets XDP make cookies from the SYN alone
/// (`bpf_tcp_raw_gen_syncookie_*`, Linux 6.0).
pub fn from_the_syn() -> bool {
    crate::kernel::features::KernelFeatures::probed().bits & guard_common::FEATURE_RAW_SYN_COOKIE
        != 0
}

/// `Settings::cookies` and `Settings::cookie_mss` for `config` in `env`.
pub fn settings_words(config: &Config, env: &CookieEnv) -> (u32, u32) {
    let mode = match config.budgets.cookies_in_effect(env.raw) {
        // `Auto` is resolved by `cookies_in_effect`.
        SynCookies::Off | SynCookies::Auto => COOKIES_OFF,
        SynCookies::UnderFlood => COOKIES_UNDER_FLOOD,
        SynCookies::Always => COOKIES_ALWAYS,
    };
    if mode == COOKIES_OFF || !env.helper {
        return (0, 0);
    }
    let mut word = mode | env.wscale() << COOKIE_WSCALE_SHIFT;
    if env.tcp_timestamps == 2 {
        word |= COOKIES_TIMESTAMPS;
    }
    let mss4 = env.mtu.saturating_sub(40).clamp(536, 65_495);
    let mss6 = env.mtu.saturating_sub(60).clamp(1220, 65_475);
    (word, mss4 | mss6 << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(ts: u32, rcvbuf: u64, mtu: u32) -> CookieEnv {
        CookieEnv {
            tcp_timestamps: ts,
            max_rcvbuf: rcvbuf,
            mtu,
            helper: true,
            raw: true,
        }
    }

    #[test]
    fn window_scale_is_the_kernels() {
        // Debian's defaults: tcp_rmem max 6 MiB, rmem_max 208 KiB: 7, as the kernel's SYN-ACKs.
        assert_eq!(env(1, 6_291_456, 1500).wscale(), 7);
        assert_eq!(env(1, 65_535, 1500).wscale(), 0);
        assert_eq!(env(1, 1 << 31, 1500).wscale(), 14);
    }

    #[test]
    fn words_follow_the_mode_and_the_namespace() {
        let mut config = Config::default();
        config.budgets.syn_cookies = SynCookies::Off;
        assert_eq!(settings_words(&config, &env(2, 6_291_456, 1500)), (0, 0));
        // under_flood without a ceiling to spend: off.
        config.budgets.syn_cookies = SynCookies::UnderFlood;
        config.budgets.syn_ceiling = 0.0;
        assert_eq!(settings_words(&config, &env(2, 6_291_456, 1500)), (0, 0));
        config.budgets.syn_ceiling = 10_000.0;
        // A kernel without bpf_tcp_gen_syncookie for XDP: off, whatever the mode.
        let without = CookieEnv {
            helper: false,
            ..env(2, 6_291_456, 1500)
        };
        assert_eq!(settings_words(&config, &without), (0, 0));
        config.budgets.syn_cookies = SynCookies::Always;
        let (word, mss) = settings_words(&config, &env(1, 6_291_456, 1500));
        assert_eq!(
            word,
            COOKIES_ALWAYS | 7 << COOKIE_WSCALE_SHIFT,
            "no timestamps with offsets"
        );
        assert_eq!((mss & 0xffff, mss >> 16), (1460, 1440));
        config.budgets.syn_cookies = SynCookies::UnderFlood;
        let (word, mss) = settings_words(&config, &env(2, 6_291_456, 9000));
        assert_eq!(
            word,
            COOKIES_UNDER_FLOOD | COOKIES_TIMESTAMPS | 7 << COOKIE_WSCALE_SHIFT
        );
        assert_eq!((mss & 0xffff, mss >> 16), (8960, 8940));
    }
}
