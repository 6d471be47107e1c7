//! The CRC-32C and length of a stream, as the catalog records them for
//! every stored file (of the content, before any compression).

use std::io::{self, Read};

const BUFFER_BYTES: usize = 256 * 1024;

/// Reads `reader` to its end; returns (bytes read, CRC-32C of them).
pub fn crc32c_of(mut reader: impl Read) -> io::Result<(u64, u32)> {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let mut size = 0u64;
    let mut crc = 0u32;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        size += read as u64;
    }
    Ok((size, crc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_one_shot_crc() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            crc32c_of(&data[..]).unwrap(),
            (data.len() as u64, crc32c::crc32c(&data))
        );
        assert_eq!(crc32c_of(&[][..]).unwrap(), (0, 0));
    }
}

/// A reader or writer that counts the bytes passing through it and their
/// CRC-32C, in a tally the caller keeps (readers are often owned by a
/// decoder stacked on top, so the tally is shared).
#[derive(Debug, Default)]
pub struct Tally {
    len: std::sync::atomic::AtomicU64,
    crc: std::sync::atomic::AtomicU32,
}

impl Tally {
    fn add(&self, bytes: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        self.len.fetch_add(bytes.len() as u64, Relaxed);
        let crc = crc32c::crc32c_append(self.crc.load(Relaxed), bytes);
        self.crc.store(crc, Relaxed);
    }

    /// (bytes, CRC-32C) so far.
    pub fn result(&self) -> (u64, u32) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.len.load(Relaxed), self.crc.load(Relaxed))
    }
}

/// Passes reads or writes through to `inner`, adding them to `tally`.
pub struct Tallied<T> {
    pub inner: T,
    tally: std::sync::Arc<Tally>,
}

impl<T> Tallied<T> {
    pub fn new(inner: T) -> (Self, std::sync::Arc<Tally>) {
        let tally = std::sync::Arc::new(Tally::default());
        (
            Tallied {
                inner,
                tally: tally.clone(),
            },
            tally,
        )
    }
}

impl<R: Read> Read for Tallied<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }
}

impl<W: io::Write> io::Write for Tallied<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.tally.add(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
