//! The lists' costs: loading N prefixes (parsing a list file, writing the trie and, for IPv4,
//! the index), swapping a list
//! for another of the same size, and the per-packet cost of the lookups (block list miss, MX
//! allowlist hit) with N prefixes in each list.
//!
//! Packets come from the documentation ranges, and so do IPv6 lists (in 2001:db8::/32). IPv4
//! lists start in 198.18.0.0/15 (the packet's source is there) and, past the 131070 prefixes
//! of a /16, continue in /16s of the reserved 240.0.0.0/4, which no packet uses.

use std::{path::Path, time::Instant};

use aya::programs::Xdp;
use guard_common::Reason;
use guard_tests::packet::{Packet, SYN, tcp};
use ipnet::IpNet;
use mailguard::{
    config::Config,
    config::lists::parse_list_file,
    kernel::policy::{AddrList, Contents},
};

use crate::{
    check_path,
    measure::{self, CHECK_RUNS, Comparison, compare_all},
};

/// One family at one scale.
pub struct ListRow {
    pub family: &'static str,
    pub entries: usize,
    /// Parsing a list file of `entries` lines.
    pub parse_ms: f64,
    /// Writing `entries` prefixes into an empty trie.
    pub load_ms: f64,
    /// Replacing them all with `entries` others (added first, then the old ones removed).
    pub swap_ms: f64,
    /// A SYN to port 25 from an allowed source: block list miss, MX allowlist hit.
    pub lookup: Comparison,
}

/// The prefixes of /16 `base` (all 131070 of /17 to /32), longest first (`longest_first`) or
/// shortest first.
fn v4_prefixes_of(base: [u8; 2], longest_first: bool) -> impl Iterator<Item = IpNet> {
    let lens: Vec<u8> = if longest_first {
        (17..=32).rev().collect()
    } else {
        (17..=32).collect()
    };
    lens.into_iter().flat_map(move |len| {
        let count = 1u32 << (len - 16);
        (0..count).map(move |k| {
            let host = k << (32 - len);
            let addr =
                std::net::Ipv4Addr::from(u32::from_be_bytes([base[0], base[1], 0, 0]) | host);
            IpNet::new(addr.into(), len).expect("valid length")
        })
    })
}

/// `n` IPv4 prefixes: those of /16 `first` (in the order `longest_first` says), then, beyond
/// its 131070, those of the /16s of `more` (in the reserved 240.0.0.0/4: list entries only,
/// no packet is ever sent to or from them).
fn v4_prefixes(first: [u8; 2], more: u8, n: usize, longest_first: bool) -> Vec<IpNet> {
    v4_prefixes_of(first, longest_first)
        .chain((0..=255u8).flat_map(move |b| v4_prefixes_of([240 + more, b], longest_first)))
        .take(n)
        .collect()
}

/// `n` IPv6 prefixes: /96s under 2001:db8:0:`group`::/64 (allow lists) or /64s outside
/// 2001:db8:0::/48 (block lists).
fn v6_prefixes(group: u16, n: usize, block: bool) -> Vec<IpNet> {
    (0..n as u32)
        .map(|i| {
            let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            if block {
                a[4..8].copy_from_slice(&(i + 0x0001_0000).to_be_bytes());
                IpNet::new(std::net::Ipv6Addr::from(a).into(), 64).expect("/64")
            } else {
                a[6..8].copy_from_slice(&group.to_be_bytes());
                a[8..12].copy_from_slice(&i.to_be_bytes());
                IpNet::new(std::net::Ipv6Addr::from(a).into(), 96).expect("/96")
            }
        })
        .collect()
}

fn addr_list(nets: &[IpNet]) -> AddrList {
    let mut l = AddrList::default();
    for n in nets {
        l.insert(n, 0);
    }
    l
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Measures one family at every scale, on a guard of its own (MX-only on, no budgets).
pub fn measure(floor: &Xdp) -> Result<Vec<ListRow>, String> {
    let (config, _) = Config::parse(
        // No budget on port 25: the packet's cost beyond the floor is parsing and the lookups.
        // The IPv6 index table sized for the largest swap (a million prefixes replaced by a
        // million others: both versions at once).
        "mx_only = true\n[budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 0\n\
         [lists]\nipv6_index_capacity = 2200000\n",
        "bench",
    )
    .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let cases: [(&str, &[usize]); 2] = [
        ("IPv4", &[10, 100_000, 1_000_000]),
        ("IPv6", &[10, 100_000, 1_000_000]),
    ];
    for (family, scales) in cases {
        let v6 = family == "IPv6";
        // The source: covered by the allowlist's first prefix in both versions.
        let packet = if v6 {
            Packet::v6("2001:db8::5", "2001:db8::1", tcp(40000, 25, SYN)).build()
        } else {
            Packet::v4("198.18.0.5", "198.18.0.1", tcp(40000, 25, SYN)).build()
        };
        // One guard per scale, all loaded at once, so that their lookups are timed in the same
        // trials (with the floor): the machine's drift cannot pass for a cost that grows.
        let mut guards = Vec::new();
        let mut costs = Vec::new();
        for &n in scales {
            let mut guard = crate::loaded(&config)?;
            costs.push(fill(&mut guard, &config, family, n)?);
            check_path(
                &guard,
                &format!("{family} allowed SYN, {n} prefixes"),
                &packet,
                Reason::MailNew,
                CHECK_RUNS,
            )?;
            guards.push(guard);
        }
        let xdps = guards
            .iter()
            .map(|g| g.xdp().map_err(|e| e.to_string()))
            .collect::<Result<Vec<&Xdp>, String>>()?;
        let lookups = compare_all(&xdps, floor, &packet);
        for ((&n, (parse_ms, load_ms, swap_ms)), lookup) in scales.iter().zip(costs).zip(lookups) {
            println!(
                "lists {family} {n:>8} prefixes: parse {parse_ms:.0} ms, load {load_ms:.0} ms, swap {swap_ms:.0} ms; \
                 lookups {:.0} ns ({:.2}x the floor)",
                lookup.mailguard.median, lookup.ratio.median
            );
            rows.push(ListRow {
                family,
                entries: n,
                parse_ms,
                load_ms,
                swap_ms,
                lookup,
            });
        }
    }
    Ok(rows)
}

/// Fills a guard's lists for one row: `n` prefixes parsed from a list file and loaded into the
/// empty MX allowlist, swapped for `n` others, then `n` in the block list too. Returns the
/// (parse, load, swap) milliseconds.
fn fill(
    guard: &mut mailguard::kernel::guard::Guard,
    config: &Config,
    family: &str,
    n: usize,
) -> Result<(f64, f64, f64), String> {
    let v6 = family == "IPv6";
    let (allow_a, allow_b, block) = if v6 {
        let mut a = v6_prefixes(0, n, false);
        let mut b = v6_prefixes(1, n, false);
        let source: IpNet = "2001:db8::/64".parse().expect("prefix");
        a[0] = source;
        b[0] = source;
        (a, b, v6_prefixes(0, n, true))
    } else {
        (
            v4_prefixes([198, 18], 0, n, true),
            v4_prefixes([198, 18], 1, n, false),
            v4_prefixes([198, 19], 2, n, true),
        )
    };
    let text: String = allow_a.iter().map(|p| format!("{p}\n")).collect();
    let started = Instant::now();
    let parsed = parse_list_file(Path::new("bench.txt"), &text)?;
    let parse_ms = ms(started);
    if parsed.len() != n {
        return Err(format!("parsed {} of {n} prefixes", parsed.len()));
    }
    let empty = Contents::default();
    let a = Contents {
        mx_allow: addr_list(&parsed),
        ..Contents::default()
    };
    let mut maps = guard.policy_maps().map_err(|e| e.to_string())?;
    let started = Instant::now();
    maps.apply_over(&empty, &a, config)
        .map_err(|e| e.to_string())?;
    let load_ms = ms(started);
    let b = Contents {
        mx_allow: addr_list(&allow_b),
        ..Contents::default()
    };
    let started = Instant::now();
    maps.apply_over(&a, &b, config).map_err(|e| e.to_string())?;
    let swap_ms = ms(started);
    let full = Contents {
        mx_allow: b.mx_allow.clone(),
        block: addr_list(&block),
        ..Contents::default()
    };
    maps.apply_over(&b, &full, config)
        .map_err(|e| e.to_string())?;
    drop(maps);
    indexed(guard, v6)?;
    Ok((parse_ms, load_ms, swap_ms))
}

/// Fails unless the MX allowlist and the block list of the family are read through their
/// indexes (a row measuring a trie walk would not be the figure it claims).
fn indexed(guard: &mailguard::kernel::guard::Guard, v6: bool) -> Result<(), String> {
    use guard_common::{INDEX_BLOCK, INDEX_MX_ALLOW, Settings, index_active_bit, maps, v6_list};
    let map = guard.map(maps::SETTINGS).ok_or("no settings map")?;
    let settings: aya::maps::Array<_, Settings> =
        aya::maps::Array::try_from(map).map_err(|e| e.to_string())?;
    let index = settings.get(&0, 0).map_err(|e| e.to_string())?.index;
    for list in [INDEX_MX_ALLOW, INDEX_BLOCK] {
        let bits = if v6 { v6_list(list) } else { list };
        if index & index_active_bit(bits) == 0 {
            return Err(format!(
                "list {list} of {} is not indexed (Settings::index {index:#x})",
                if v6 { "IPv6" } else { "IPv4" }
            ));
        }
    }
    Ok(())
}

/// Largest median ratio to the floor over smallest, per family (ratios, not raw ns: the floor
/// is timed beside every trial, so the machine's drift between scales cancels out).
pub fn spread(rows: &[ListRow], family: &str) -> f64 {
    let ratios: Vec<f64> = rows
        .iter()
        .filter(|r| r.family == family)
        .map(|r| r.lookup.ratio.median)
        .collect();
    measure::spread(&ratios)
}

/// The report's section.
pub fn report(rows: &[ListRow]) -> String {
    use std::fmt::Write as _;
    let mut md = String::from(
        "## Lists\n\nMX-only on, no budget on port 25. Each row has a mailguard of its own, and the three of a family are \
         timed in the same trials, rotating with the floor (so that the machine's drift between rows cannot look \
         like a cost that grows with the list). Each row: a list file of N prefixes parsed, written into the \
         empty MX allowlist trie (load), replaced by N other prefixes (swap: the new ones added, then the old ones \
         removed, as the daemon does), then the block list filled with N prefixes too. The packet, a SYN to port 25 \
         from an allowed source, then pays a block-list miss and an allowlist hit, through the lists' indexes (load \
         and swap include writing them; the run stops if a list is not indexed): IPv4 through the three-level \
         arrays, IPv6 through the prefix table, two bucket loads per distinct prefix length of the list (the table sized \
         for 2.2 million prefixes, `lists.ipv6_index_capacity`). IPv6 prefixes are in \
         2001:db8::/32: the allowlists hold /96s and the /64 the source is in (two lengths: the /96 \
         miss, then the /64 hit), the block list /64s (one length: one miss). IPv4 ones are the 131070 prefixes of /17 to /32 in a /16 of 198.18.0.0/15, then those of \
         /16s in the reserved 240.0.0.0/4 (list entries only: every packet comes from 198.18.0.0/15). Dense like \
         this, a million IPv4 prefixes fit the index (it holds lists that cover at most 1,024 /16s and 16,384 /24s \
         in part). A list the index cannot hold (IPv4 more scattered than that, IPv6 with more than 8 distinct \
         prefix lengths) is looked up in its trie, whose cost grows with the list (before the IPv6 index, these \
         IPv6 rows measured 97, 107 and 107 ns through the tries).\n\n\
         | family | prefixes | parse ms | load ms | swap ms | lookup ns (min-max) | ratio to floor |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} ({:.0}-{:.0}) | {:.2}x |",
            r.family,
            r.entries,
            r.parse_ms,
            r.load_ms,
            r.swap_ms,
            r.lookup.mailguard.median,
            r.lookup.mailguard.min,
            r.lookup.mailguard.max,
            r.lookup.ratio.median
        );
    }
    for family in ["IPv4", "IPv6"] {
        let s = spread(rows, family);
        let _ = write!(
            md,
            "\n{family}: largest ratio to the floor over smallest {s:.2} ({} the 10% flatness target of issue 5).",
            if s <= 1.10 { "within" } else { "**outside**" }
        );
    }
    md.push('\n');
    md
}
