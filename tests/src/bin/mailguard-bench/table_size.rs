//! A new source's cost against the size of the rate table (`budgets.tracked_sources`): the
//! insert path of section 2 on a mailguard per table size, each beside the memory reference on
//! a table of its size, the floor and xdp-filter, single runs rotating as in section 2.
//!
//! A new source reads its bucket, memory no recent packet touched; what that read costs grows
//! with the table (caches, then the TLB, then DRAM). This shows where it crosses the
//! new-source target, for mailguard and for the reference alone (the cost no per-source table
//! of that size can go below).

use std::fmt::Write as _;

use aya::programs::Xdp;
use guard_common::{AccountingEvent, DEFAULT_TRACKED_SOURCES, SourceBucket, source_buckets};
use mailguard::{config::Config, kernel::guard::Guard};

use crate::{
    DEFAULT_TABLES_CONFIG, NEW_SOURCES, NEW_TRIALS, NewPath, guard_accounting,
    measure::{Stats, Timed, differences, ns_per_run, ratios, rotating_single_runs, stats},
    peer::XdpFilter,
    prepared, spread_ns,
    touch::BucketTouch,
};

/// `budgets.tracked_sources` of each point: tables of 32 KiB, 256 KiB, 1 MiB, the default
/// 4 MiB, 32 MiB, and the million-source tables of the other sections (about 140 MB).
pub const SIZES: [u32; 6] = [
    512,
    4_096,
    16_384,
    DEFAULT_TRACKED_SOURCES,
    524_288,
    crate::TRACKED_SOURCES,
];

/// One table size.
pub struct SizePoint {
    pub tracked_sources: u32,
    /// The rate table's size in bytes.
    pub bytes: u64,
    pub mailguard: NewPath,
    pub reference: NewPath,
    /// mailguard over the reference, trial by trial, in ns.
    pub over_reference: Stats,
}

pub struct Curve {
    pub floor: Stats,
    pub peer: NewPath,
    pub points: Vec<SizePoint>,
}

/// The configuration of a point: the bench's (every SYN admitted by the ceiling, each paying
/// its check) with a table for `tracked_sources`.
fn config(tracked_sources: u32) -> Result<Config, String> {
    let text = format!("{DEFAULT_TABLES_CONFIG}tracked_sources = {tracked_sources}\n");
    Config::parse(&text, "bench")
        .map(|(c, _)| c)
        .map_err(|e| e.to_string())
}

pub fn measure(
    floor: &Xdp,
    peer: &XdpFilter,
    syn: &dyn Fn(&str, u16) -> Vec<u8>,
) -> Result<Curve, String> {
    let mut guards: Vec<Guard> = Vec::new();
    let mut touches: Vec<BucketTouch> = Vec::new();
    for n in SIZES {
        guards.push(prepared(&config(n)?)?);
        touches.push(BucketTouch::load(source_buckets(n))?);
    }
    let xdps = guards
        .iter()
        .map(|g| g.xdp().map_err(|e| e.to_string()))
        .collect::<Result<Vec<&Xdp>, String>>()?;
    let tracked = |g: &Guard| guard_accounting(g, AccountingEvent::SourceTracked);
    let before = guards.iter().map(tracked).collect::<Result<Vec<_>, _>>()?;
    // Sources none of section 2's runs used (those are 198.19.0.1 to 198.19.79.250).
    let source = |i: u32| syn(&format!("198.19.{}.{}", 128 + i / 250, 1 + i % 250), 25);
    // Programs per packet: floor, xdp-filter, then mailguard and reference per size.
    let mut programs: Vec<&dyn Timed> = vec![floor, peer];
    for (x, t) in xdps.iter().zip(&touches) {
        programs.push(*x);
        programs.push(t);
    }
    // The packet is built once per source and used by every program.
    let mut packet = (u32::MAX, Vec::new());
    let times = rotating_single_runs(programs.len(), NEW_SOURCES, NEW_TRIALS, |j, i| {
        if packet.0 != i {
            packet = (i, source(i));
        }
        ns_per_run(programs[j], &packet.1, 1)
    });
    for ((n, g), b) in SIZES.iter().zip(&guards).zip(&before) {
        let inserted = tracked(g)? - b;
        if inserted != NEW_SOURCES as u64 {
            return Err(format!(
                "new-source runs (table for {n} sources) inserted {inserted} sources, expected {NEW_SOURCES}"
            ));
        }
    }
    for (n, t) in SIZES.iter().zip(&touches) {
        let touched = t.touches()?;
        if touched != NEW_SOURCES as u64 {
            return Err(format!(
                "the memory reference (table for {n} sources) touched its table {touched} times, expected {NEW_SOURCES}"
            ));
        }
    }
    let path = |t: &[f64]| NewPath {
        ns: stats(t.to_vec()),
        ratio: ratios(t, &times[0]),
        over_peer: ratios(t, &times[1]),
    };
    let points: Vec<SizePoint> = SIZES
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            let (mine, reference) = (&times[2 + 2 * k], &times[3 + 2 * k]);
            SizePoint {
                tracked_sources: n,
                bytes: source_buckets(n) as u64 * size_of::<SourceBucket>() as u64,
                mailguard: path(mine),
                reference: path(reference),
                over_reference: differences(mine, reference),
            }
        })
        .collect();
    for p in &points {
        println!(
            "table for {:>8} sources ({:>6}): new source {:.0} ns ({:.2}x floor, {:.2}x xdp-filter), memory \
             reference {:.0} ns ({:.2}x floor)",
            p.tracked_sources,
            human_bytes(p.bytes),
            p.mailguard.ns.median,
            p.mailguard.ratio.median,
            p.mailguard.over_peer.median,
            p.reference.ns.median,
            p.reference.ratio.median,
        );
    }
    Ok(Curve {
        floor: stats(times[0].clone()),
        peer: path(&times[1]),
        points,
    })
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{} KiB", b >> 10)
    }
}

/// Whether a path meets the new-source target: at most 3x the floor and below xdp-filter.
fn meets(p: &NewPath) -> bool {
    p.ratio.median <= 3.0 && p.over_peer.median < 1.0
}

/// The largest table (from the smallest up, without a miss in between) whose path meets the
/// target, as a phrase.
fn largest_meeting(points: &[SizePoint], path: impl Fn(&SizePoint) -> &NewPath) -> String {
    let last = points.iter().take_while(|p| meets(path(p))).last();
    match last {
        Some(p) => format!(
            "up to the table for {} sources ({})",
            p.tracked_sources,
            human_bytes(p.bytes)
        ),
        None => "at no size measured".to_string(),
    }
}

/// The report's section; `plot` is the image path relative to the report, if drawn.
pub fn report(c: &Curve, plot: Option<&str>) -> String {
    let mut md = format!(
        "\n## New sources against the table's size\n\n\
         The insert path of the section above on a mailguard per rate-table size \
         (`budgets.tracked_sources`; bench configuration otherwise), each beside the memory reference on a \
         table of its size, with the floor and xdp-filter, one single run of each per packet, their order \
         rotating, over {NEW_SOURCES} SYNs from sources none of the other runs used (counters prove that \
         every mailguard inserted them all and every reference touched its table for each); figures are \
         medians of {NEW_TRIALS} trials with min-max, ratios trial by trial. The floor: {:.0} ns ({:.0}-{:.0}); \
         xdp-filter on the same packets: {:.0} ns ({:.2}x the floor).\n\n",
        c.floor.median, c.floor.min, c.floor.max, c.peer.ns.median, c.peer.ratio.median
    );
    if let Some(p) = plot {
        let _ = writeln!(md, "![new-source cost against table size]({p})\n");
    }
    md += "| tracked sources | table | mailguard ns (min-max) | ratio to floor | to xdp-filter | memory reference ns (min-max) | ratio to floor | mailguard over the reference, ns (min-max) |\n\
           |---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for p in &c.points {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2}x | {:.2}x | {} | {:.2}x | {} |",
            p.tracked_sources,
            human_bytes(p.bytes),
            spread_ns(&p.mailguard.ns),
            p.mailguard.ratio.median,
            p.mailguard.over_peer.median,
            spread_ns(&p.reference.ns),
            p.reference.ratio.median,
            spread_ns(&p.over_reference),
        );
    }
    let over: Vec<f64> = c.points.iter().map(|p| p.over_reference.median).collect();
    let (low, high) = over
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
    let _ = writeln!(
        md,
        "\nThe new-source target (at most 3x the floor and below xdp-filter) is met by mailguard {}, and by \
         the memory reference alone {}. mailguard's own work on the path (headers, port rule, key compares, \
         claim, ceiling token, counters) costs {low:.0} to {high:.0} ns over the reference across the sizes; \
         the rest, which grows with the table, is the bucket's memory.",
        largest_meeting(&c.points, |p| &p.mailguard),
        largest_meeting(&c.points, |p| &p.reference),
    );
    md
}

/// ns per new source against the table's size (log scale): mailguard, the reference, and the
/// floor and xdp-filter (which keep no per-source table) as flat lines. Returns (alt text,
/// file name) of the PNG written into `dir`.
pub fn plot(c: &Curve, dir: &std::path::Path) -> Result<(&'static str, String), String> {
    let mut data = String::from("$sizes << EOD\n");
    for p in &c.points {
        let kib = p.bytes as f64 / 1024.0;
        let s = |s: &Stats| format!("{:.1} {:.1} {:.1}", s.median, s.min, s.max);
        data += &format!(
            "{kib:.1} {} {} {} {}\n",
            s(&p.mailguard.ns),
            s(&p.reference.ns),
            s(&c.floor),
            s(&c.peer.ns)
        );
    }
    data += "EOD\n";
    let file = "new-sources.png";
    crate::plots::render(
        &dir.join(file),
        "SYN from a new source against the size of the rate table (single runs)",
        &format!(
            "{data}set logscale x 2\nset xlabel 'rate table (KiB, log scale)'\nset ylabel 'ns per packet (median, min-max)'\n\
             set xrange [16:262144]\nset yrange [0:*]\nset grid\nset key top left\n\
             plot $sizes using 1:2:3:4 with yerrorlines lw 2 pt 7 title 'mailguard, new source', \
             $sizes using 1:5:6:7 with yerrorlines lw 2 pt 5 title 'memory reference (the bucket alone)', \
             $sizes using 1:11:12:13 with yerrorlines lw 2 pt 9 title 'xdp-filter (same packets)', \
             $sizes using 1:8:9:10 with yerrorlines lw 2 pt 3 title 'floor (XDP_DROP only)', \
             $sizes using 1:($8*3) with lines lw 1 lc rgb 'black' dashtype 2 title 'target: 3x the floor'\n"
        ),
    )?;
    Ok(("new-source cost against table size", file.to_string()))
}
