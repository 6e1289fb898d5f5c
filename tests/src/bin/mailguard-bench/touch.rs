//! The memory reference for new sources: tests/reference-ebpf's `xdp_bucket_touch`, which reads and
//! writes the bucket mailguard would use for the packet's source in a table of its own, laid
//! out and sized as mailguard's, and does nothing else.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::Xdp,
};
use guard_common::SourceBucket;
use guard_tests::reference;
use mailguard::kernel::mapped::MappedArray;

use crate::measure::{Run, Timed};

pub struct BucketTouch {
    ebpf: Ebpf,
}

const PROGRAM: &str = "xdp_bucket_touch";
const TABLE: &str = "REF_TOUCH_TABLE";

impl BucketTouch {
    /// The reference with a table of `buckets` buckets.
    pub fn load(buckets: u32) -> Result<BucketTouch, String> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(TABLE, buckets)
            .load(reference::BUCKET_TOUCH)
            .map_err(|e| format!("loading {PROGRAM}: {e}"))?;
        let mut size: Array<&mut MapData, u32> = Array::try_from(
            ebpf.map_mut("REF_TOUCH_BUCKETS")
                .ok_or("no REF_TOUCH_BUCKETS")?,
        )
        .map_err(|e| e.to_string())?;
        size.set(0, buckets, 0).map_err(|e| e.to_string())?;
        reference::xdp_program(&mut ebpf, PROGRAM)?;
        Ok(BucketTouch { ebpf })
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded in BucketTouch::load")
    }

    /// How many runs touched the table: the sum of its buckets' counts (read as memory, as
    /// `mailguard status` reads mailguard's table).
    pub fn touches(&self) -> Result<u64, String> {
        let table: MappedArray<SourceBucket> = MappedArray::open(
            self.ebpf.map(TABLE).ok_or(format!("no {TABLE}"))?,
            TABLE,
            false,
        )
        .map_err(|e| e.to_string())?;
        Ok((0..table.len())
            .map(|i| table.get(i).connections as u64)
            .sum())
    }
}

impl Timed for BucketTouch {
    fn run(&self, packet: &[u8], repeat: u32) -> Run {
        self.program().run(packet, repeat)
    }
}
