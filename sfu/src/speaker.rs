//! TEMPORARY STUB (replaced by the real SpeakerDetector).
use std::hash::Hash;
use std::time::Instant;
pub struct SpeakerDetector<K> {
    d: Option<K>,
}
impl<K: Copy + Eq + Hash> SpeakerDetector<K> {
    pub fn new() -> Self {
        SpeakerDetector { d: None }
    }
    pub fn observe(&mut self, key: K, _level: u8, _now: Instant) {
        self.d = Some(key);
    }
    pub fn remove(&mut self, _key: K) {}
    pub fn tick(&mut self, _now: Instant) -> Option<Vec<(K, f32)>> {
        None
    }
    pub fn dominant(&self) -> Option<K> {
        self.d
    }
}
impl<K: Copy + Eq + Hash> Default for SpeakerDetector<K> {
    fn default() -> Self {
        Self::new()
    }
}
