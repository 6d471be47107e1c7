//! A dump streamed into the repository's store as pg_dump writes it to its
//! standard output: for a repository that is not a directory on this host
//! (a bucket), where pg_dump cannot write by itself. A thread of its own
//! copies the pipe into a stored file and keeps the size and CRC-32C of
//! what passed; the file is finished (and so appears) only once pg_dump
//! has ended well, and is abandoned otherwise, which for an object store
//! aborts its upload. The thread only copies bytes: it touches nothing of
//! the server.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::repository::catalog::{StoredFile, StoredKind};
use crate::storage::StoredWriter;

const BUFFER_BYTES: usize = 256 * 1024;

/// What passed through, with the writer still open.
struct Copied {
    writer: Box<dyn StoredWriter>,
    size: u64,
    crc32c: u32,
}

pub struct OutputStream {
    copier: JoinHandle<io::Result<Copied>>,
    bytes: Arc<AtomicU64>,
}

impl OutputStream {
    /// Starts copying `source` (pg_dump's standard output) into `writer`.
    pub fn start(
        source: impl Read + Send + 'static,
        writer: Box<dyn StoredWriter>,
    ) -> io::Result<Self> {
        let bytes = Arc::new(AtomicU64::new(0));
        let counted = bytes.clone();
        let copier = thread::Builder::new()
            .name("pg_dump output".into())
            .spawn(move || copy(source, writer, &counted))?;
        Ok(OutputStream { copier, bytes })
    }

    /// Bytes copied so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Waits for the output to end (pg_dump closed it, or died). With
    /// `keep`, finishes the stored file and describes it as `path`;
    /// without, abandons it.
    pub fn finish(self, keep: bool, path: &str) -> io::Result<Option<StoredFile>> {
        let copied = self
            .copier
            .join()
            .map_err(|_| io::Error::other("the thread copying pg_dump's output panicked"))??;
        if !keep {
            drop(copied.writer);
            return Ok(None);
        }
        let stored = copied.writer.finish()?;
        if stored != copied.size {
            return Err(io::Error::other(format!(
                "{stored} bytes were stored of the {} pg_dump wrote",
                copied.size
            )));
        }
        Ok(Some(StoredFile {
            path: path.to_owned(),
            kind: StoredKind::Whole,
            size: copied.size,
            stored_size: copied.size,
            crc32c: copied.crc32c,
            stored_crc32c: Some(copied.crc32c),
            mtime: crate::civil_time::unix_now_us() / 1_000_000,
        }))
    }
}

fn copy(
    mut source: impl Read,
    mut writer: Box<dyn StoredWriter>,
    bytes: &AtomicU64,
) -> io::Result<Copied> {
    let mut buffer = vec![0u8; BUFFER_BYTES];
    let (mut size, mut crc32c) = (0u64, 0u32);
    loop {
        let read = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        writer.write_all(&buffer[..read])?;
        crc32c = crc32c::crc32c_append(crc32c, &buffer[..read]);
        size += read as u64;
        bytes.store(size, Ordering::Relaxed);
    }
    Ok(Copied {
        writer,
        size,
        crc32c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;
    use crate::storage::Storage;

    #[test]
    fn a_kept_stream_is_stored_whole_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let content: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let stream = OutputStream::start(
            io::Cursor::new(content.clone()),
            storage.create("d/dump.custom").unwrap(),
        )
        .unwrap();
        let file = stream.finish(true, "dump.custom").unwrap().unwrap();
        assert_eq!(file.size, content.len() as u64);
        assert_eq!(file.crc32c, crc32c::crc32c(&content));
        assert_eq!(storage.get("d/dump.custom").unwrap().unwrap(), content);
    }

    #[test]
    fn an_abandoned_stream_leaves_no_file_and_a_broken_source_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path());
        let stream = OutputStream::start(
            io::Cursor::new(vec![1u8; 1000]),
            storage.replace("d/x").unwrap(),
        )
        .unwrap();
        assert_eq!(stream.finish(false, "x").unwrap(), None);
        assert_eq!(storage.get("d/x").unwrap(), None);

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("pipe broke"))
            }
        }
        let stream = OutputStream::start(Broken, storage.replace("d/y").unwrap()).unwrap();
        assert!(stream.finish(true, "y").is_err());
        assert_eq!(storage.get("d/y").unwrap(), None);
    }
}
