//! Buffer sizing: which pool tier a transfer uses.
//!
//! Today the choice follows the transfer's known length: the smallest tier that holds the whole
//! transfer, else the largest (bulk transfers get big buffers; small files small ones). The
//! adaptive policy driven by live network figures plugs in here.

/// Picks tiers from the pool's size classes.
#[derive(Debug, Clone)]
pub struct Sizer {
    tiers: Vec<usize>,
}

impl Sizer {
    pub fn new(tiers: Vec<usize>) -> Self {
        Self { tiers }
    }

    /// Tier index for a transfer of `len` bytes (unknown → a middle tier).
    pub fn tier_for_len(&self, len: Option<u64>) -> usize {
        let last = self.tiers.len().saturating_sub(1);
        match len {
            None => last / 2,
            Some(n) => self
                .tiers
                .iter()
                .position(|&t| t as u64 >= n)
                .unwrap_or(last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_transfers_use_small_tiers_and_bulk_the_largest() {
        let s = Sizer::new(vec![16 << 10, 64 << 10, 256 << 10, 1 << 20]);
        assert_eq!(s.tier_for_len(Some(0)), 0);
        assert_eq!(s.tier_for_len(Some(4096)), 0);
        assert_eq!(s.tier_for_len(Some(20_000)), 1);
        assert_eq!(s.tier_for_len(Some(1 << 20)), 3);
        assert_eq!(s.tier_for_len(Some(1 << 30)), 3);
        assert_eq!(s.tier_for_len(None), 1);
    }
}
