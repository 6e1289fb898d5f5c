//! Sections 2 and 3: a mail SYN from a new source (the insert path) by single runs over many
//! sources, and the rate table filled with up to a million tracked sources.

use crate::measure::{Stats, Timed, differences, ns_per_run, ratios, rotating_single_runs, stats};
use crate::peer::XdpFilter;
use crate::touch::BucketTouch;
use crate::{NEW_SOURCES, NEW_TRIALS, TRACKED_SOURCES};
use aya::{maps::Array, programs::Xdp};
use guard_common::{
    AccountingEvent, DEFAULT_TRACKED_SOURCES, MailClass, Reason, SourceBucket, SourceKey,
    SourceSlot, SourceState, maps as names, prefix_mask, source_bucket, source_buckets,
};
use guard_tests::harness::set_connections;
use mailguard::kernel::guard::Guard;

/// A mail SYN from a new source (the insert path), by single runs over `NEW_SOURCES` packets,
/// each from a source mailguard has not seen, on `big` (the measured configuration's tables)
/// and on `default` (the default configuration's), beside a known source's single runs, the
/// floor's and xdp-filter's on the same packets, and the memory reference's (`BucketTouch`) on
/// tables of both sizes, and on `spent` (default tables, its SYN ceiling spent before the runs,
/// so that every SYN takes a spoofed flood's path: dropped by the ceiling): one run of each per
/// packet, their order rotating, so that the machine's drift falls on all alike. Then the same
/// sources once more on
/// `big`, each tracked but not seen lately, beside the floor. Every figure is the median of
/// `NEW_TRIALS` trials, each the mean of its share of the packets.
pub(crate) fn new_sources(
    big: &Guard,
    default: &Guard,
    spent: &Guard,
    floor: &Xdp,
    peer: &XdpFilter,
    syn: &dyn Fn(&str, u16) -> Vec<u8>,
) -> Result<NewSources, String> {
    let big_xdp = big.xdp().map_err(|e| e.to_string())?;
    let default_xdp = default.xdp().map_err(|e| e.to_string())?;
    let spent_xdp = spent.xdp().map_err(|e| e.to_string())?;
    // One SYN, from a source outside the measured ones, spends the ceiling.
    ns_per_run(spent_xdp, &syn("198.18.200.1", 25), 1);
    let spent0 = spent.counters().map_err(|e| e.to_string())?;
    let known = syn("198.18.0.2", 25);
    // The known source is tracked before the count starts.
    ns_per_run(big_xdp, &known, 1);
    let tracked = |g: &Guard| guard_accounting(g, AccountingEvent::SourceTracked);
    let (big0, default0) = (tracked(big)?, tracked(default)?);
    let touch_big = BucketTouch::load(source_buckets(TRACKED_SOURCES))?;
    let touch_default = BucketTouch::load(source_buckets(DEFAULT_TRACKED_SOURCES))?;
    let source = |i: u32| syn(&format!("198.19.{}.{}", i / 250, 1 + i % 250), 25);
    // times[path][trial]: floor, xdp-filter, known, new (big), new (default), reference (big),
    // reference (default), ceiling spent (default).
    let programs: [(&dyn Timed, bool); 8] = [
        (floor, false),
        (peer, false),
        (big_xdp, true),
        (big_xdp, false),
        (default_xdp, false),
        (&touch_big, false),
        (&touch_default, false),
        (spent_xdp, false),
    ];
    // The packet is built once per source; `true` runs the known source's instead.
    let mut packet = (u32::MAX, Vec::new());
    let times = rotating_single_runs(programs.len(), NEW_SOURCES, NEW_TRIALS, |j, i| {
        if packet.0 != i {
            packet = (i, source(i));
        }
        let (program, known_source) = programs[j];
        ns_per_run(program, if known_source { &known } else { &packet.1 }, 1)
    });
    for (name, g, before) in [
        ("tables for a million", big, big0),
        ("default tables", default, default0),
    ] {
        let inserted = tracked(g)? - before;
        if inserted != NEW_SOURCES as u64 {
            return Err(format!(
                "new-source runs ({name}) inserted {inserted} sources, expected {NEW_SOURCES}"
            ));
        }
    }
    let dropped = spent.counters().map_err(|e| e.to_string())?.delta(&spent0);
    if dropped != [(Reason::SynCeiling, NEW_SOURCES as u64)] {
        return Err(format!(
            "ceiling-spent runs: counters moved {dropped:?}, expected syn_ceiling+{NEW_SOURCES}"
        ));
    }
    for (name, touch) in [
        ("tables for a million", &touch_big),
        ("default tables", &touch_default),
    ] {
        let touches = touch.touches()?;
        if touches != NEW_SOURCES as u64 {
            return Err(format!(
                "the memory reference ({name}) touched its table {touches} times, expected {NEW_SOURCES}"
            ));
        }
    }
    // Once more: every source is tracked now, its bucket untouched for NEW_SOURCES packets.
    let big1 = tracked(big)?;
    let second: [&dyn Timed; 2] = [big_xdp, floor];
    let mut packet = (u32::MAX, Vec::new());
    let mut again = rotating_single_runs(2, NEW_SOURCES, NEW_TRIALS, |j, i| {
        if packet.0 != i {
            packet = (i, source(i));
        }
        ns_per_run(second[j], &packet.1, 1)
    });
    let again_floor = again.pop().expect("two paths");
    let again = again.pop().expect("two paths");
    if tracked(big)? != big1 {
        return Err("the tracked sources' second runs inserted sources".into());
    }
    let path = |t: &[f64], f: &[f64]| NewPath {
        ns: stats(t.to_vec()),
        ratio: ratios(t, f),
        over_peer: ratios(t, &times[1]),
    };
    let r = NewSources {
        floor: stats(times[0].clone()),
        peer: path(&times[1], &times[0]),
        known: path(&times[2], &times[0]),
        new_big: path(&times[3], &times[0]),
        new_default: path(&times[4], &times[0]),
        touch_big: path(&times[5], &times[0]),
        touch_default: path(&times[6], &times[0]),
        spent: path(&times[7], &times[0]),
        over_touch_big: differences(&times[3], &times[5]),
        over_touch_default: differences(&times[4], &times[6]),
        again: path(&again, &again_floor),
        again_floor: stats(again_floor),
    };
    println!(
        "single runs: new source {:.0} ns (default tables {:.0} ns), memory reference {:.0} ns (default tables \
         {:.0} ns), ceiling spent {:.0} ns, known source {:.0} ns, floor {:.0} ns, xdp-filter {:.0} ns; tracked, \
         not seen lately {:.0} ns (floor {:.0} ns)",
        r.new_big.ns.median,
        r.new_default.ns.median,
        r.touch_big.ns.median,
        r.touch_default.ns.median,
        r.spent.ns.median,
        r.known.ns.median,
        r.floor.median,
        r.peer.ns.median,
        r.again.ns.median,
        r.again_floor.median
    );
    Ok(r)
}

pub(crate) fn guard_accounting(guard: &Guard, event: AccountingEvent) -> Result<u64, String> {
    let map = guard.map(names::ACCOUNTING).ok_or("no accounting map")?;
    let array: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
    Ok(array
        .get(&(event as u32), 0)
        .map_err(|e| e.to_string())?
        .iter()
        .sum())
}

/// Adds tracked sources (rate state and one open connection each) up to `to`, IPv6 /64s that no
/// packet of the bench uses, each in the first free slot of its bucket as XDP places them; a
/// source whose bucket is full is left out. Returns how many were placed.
pub(crate) fn fill_sources(guard: &mut Guard, from: u32, to: u32) -> Result<u32, String> {
    let key = |i: u32| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[4..8].copy_from_slice(&i.to_be_bytes());
        SourceKey::v6(a, prefix_mask::<16>(64), MailClass::Mx as u8)
    };
    let buckets = source_buckets(TRACKED_SOURCES);
    let mut placed = 0;
    {
        let map = guard.map_mut(names::SOURCES).ok_or("no sources map")?;
        let mut sources: Array<_, SourceBucket> =
            Array::try_from(map).map_err(|e| e.to_string())?;
        for i in from..to {
            let k = key(i);
            let b = source_bucket(k.slot_hash(), buckets);
            let mut bucket = sources.get(&b, 0).map_err(|e| e.to_string())?;
            if let Some(slot) = bucket.slots.iter_mut().find(|s| s.key.family == 0) {
                *slot = SourceSlot {
                    key: k,
                    flags: 0,
                    state: SourceState::default(),
                };
                sources
                    .set(b, bucket, 0)
                    .map_err(|e| format!("source {i}: {e}"))?;
                placed += 1;
            }
        }
    }
    for i in from..to {
        set_connections(guard, TRACKED_SOURCES, key(i), 1)?;
    }
    Ok(placed)
}

/// One path of the new-source comparison: its single-run times and their ratios, trial by
/// trial, to the floor and to xdp-filter.
pub(crate) struct NewPath {
    pub(crate) ns: Stats,
    pub(crate) ratio: Stats,
    pub(crate) over_peer: Stats,
}

/// The new-source comparison (single runs, medians of `NEW_TRIALS` trials).
pub(crate) struct NewSources {
    pub(crate) floor: Stats,
    pub(crate) peer: NewPath,
    pub(crate) known: NewPath,
    /// A new source, tables sized as `CONFIG` says (for a million sources).
    pub(crate) new_big: NewPath,
    /// A new source, the default configuration's tables.
    pub(crate) new_default: NewPath,
    /// The memory reference (`BucketTouch`) on the same packets, a table as `new_big`'s and one
    /// as `new_default`'s.
    pub(crate) touch_big: NewPath,
    pub(crate) touch_default: NewPath,
    /// A new source when the SYN ceiling is spent (a spoofed flood's SYN, dropped), the default
    /// configuration's tables.
    pub(crate) spent: NewPath,
    /// A new source's time over the reference's, trial by trial (ns), per table size.
    pub(crate) over_touch_big: Stats,
    pub(crate) over_touch_default: Stats,
    /// The new sources once more (tracked, not seen lately), tables as `new_big`, with ratios
    /// to the floor's runs beside them (`again_floor`).
    pub(crate) again: NewPath,
    pub(crate) again_floor: Stats,
}
