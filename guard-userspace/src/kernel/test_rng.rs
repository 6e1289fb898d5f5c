//! A small deterministic generator (xorshift) for the unit tests, so that failures reproduce.

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn next_u32(&mut self) -> u32 {
        (self.next() >> 16) as u32
    }
}
