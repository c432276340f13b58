//! Request splitting: smooth weighted round robin over a rule's backendRefs, then plain round
//! robin over the chosen Service's endpoints.

use std::sync::{
    Mutex,
    atomic::{AtomicUsize, Ordering},
};

/// Smooth weighted round robin (the nginx algorithm): every pick adds each weight to its
/// running score, takes the highest score and subtracts the total from it. Over any run of
/// `sum(weights)` picks each entry gets exactly its weight, interleaved rather than in bursts,
/// so weights 200/100 give 133/67 over 200 sequential requests.
#[derive(Debug)]
pub struct SmoothWrr {
    weights: Box<[i64]>,
    total: i64,
    scores: Mutex<Box<[i64]>>,
}

impl SmoothWrr {
    pub fn new(weights: &[u32]) -> Self {
        let weights: Box<[i64]> = weights.iter().map(|&w| i64::from(w)).collect();
        let total = weights.iter().sum();
        Self {
            scores: Mutex::new(vec![0; weights.len()].into_boxed_slice()),
            weights,
            total,
        }
    }

    /// The index of the next entry, or `None` when every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        // A poisoned lock only means another picker panicked mid-update; the scores are still
        // integers and the sequence stays fair enough to keep serving.
        let mut scores = self.scores.lock().unwrap_or_else(|e| e.into_inner());
        let mut best = None;
        let mut best_score = i64::MIN;
        for (i, (score, &w)) in scores.iter_mut().zip(self.weights.iter()).enumerate() {
            if w == 0 {
                continue;
            }
            *score += w;
            // Strictly greater: ties go to the earlier backendRef, which keeps the sequence
            // the same for the same spec order.
            if *score > best_score {
                best_score = *score;
                best = Some(i);
            }
        }
        let best = best?;
        scores[best] -= self.total;
        Some(best)
    }
}

/// Round robin over a Service's endpoints.
#[derive(Debug, Default)]
pub struct EndpointCursor(AtomicUsize);

impl EndpointCursor {
    pub fn next(&self, len: usize) -> usize {
        if len <= 1 {
            return 0;
        }
        self.0.fetch_add(1, Ordering::Relaxed) % len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(weights: &[u32], n: usize) -> Vec<usize> {
        let wrr = SmoothWrr::new(weights);
        let mut c = vec![0; weights.len()];
        for _ in 0..n {
            c[wrr.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn guide_sequences() {
        assert_eq!(counts(&[1, 1], 200), vec![100, 100]);
        assert_eq!(counts(&[200, 100], 200), vec![133, 67]);
    }

    #[test]
    fn interleaves() {
        let wrr = SmoothWrr::new(&[2, 1]);
        let seq: Vec<_> = (0..6).map(|_| wrr.pick().unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 0, 0, 1, 0]);
    }

    #[test]
    fn exact_over_a_cycle() {
        assert_eq!(counts(&[70, 30, 0], 100), vec![70, 30, 0]);
        assert_eq!(
            counts(&[5, 0, 3, 1_000_000], 1_000_008),
            vec![5, 0, 3, 1_000_000]
        );
    }

    #[test]
    fn all_zero_picks_nothing() {
        assert_eq!(SmoothWrr::new(&[0, 0]).pick(), None);
        assert_eq!(SmoothWrr::new(&[]).pick(), None);
    }

    #[test]
    fn cursor_cycles() {
        let c = EndpointCursor::default();
        let seq: Vec<_> = (0..5).map(|_| c.next(3)).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1]);
        assert_eq!(c.next(0), 0);
    }
}
