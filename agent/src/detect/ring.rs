//! Fixed-capacity ring buffer: storage allocated once at construction, so a
//! rolling window never allocates per point.

#[derive(Debug, Clone)]
pub struct Ring {
    buf: Box<[f64]>,
    head: usize,
    len: usize,
}

impl Ring {
    /// `capacity` must be at least 1 (the config layer checks it).
    pub fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0.0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    /// Appends `x`; when full, returns the value it evicts.
    pub fn push(&mut self, x: f64) -> Option<f64> {
        let cap = self.buf.len();
        let evicted = if self.len == cap {
            Some(self.buf[self.head])
        } else {
            None
        };
        self.buf[self.head] = x;
        self.head = (self.head + 1) % cap;
        if self.len < cap {
            self.len += 1;
        }
        evicted
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len == self.buf.len()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The value stored `back` pushes ago (0 = newest), if still held.
    #[cfg(test)]
    pub fn get_back(&self, back: usize) -> Option<f64> {
        if back >= self.len {
            return None;
        }
        let cap = self.buf.len();
        Some(self.buf[(self.head + cap - 1 - back) % cap])
    }

    /// Address of the storage, to show in tests that it is never reallocated.
    #[cfg(test)]
    pub fn storage_ptr(&self) -> *const f64 {
        self.buf.as_ptr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_when_full() {
        let mut r = Ring::new(3);
        assert_eq!(r.push(1.0), None);
        assert_eq!(r.push(2.0), None);
        assert_eq!(r.push(3.0), None);
        assert!(r.is_full());
        assert_eq!(r.push(4.0), Some(1.0));
        assert_eq!(r.get_back(0), Some(4.0));
        assert_eq!(r.get_back(2), Some(2.0));
        assert_eq!(r.get_back(3), None);
        assert_eq!(r.capacity(), 3);
    }
}
