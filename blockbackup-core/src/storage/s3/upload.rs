//! A file streamed into an object without ever being held whole: bytes
//! gather into a part; a file that fits one part is one PUT; a larger one
//! becomes a multipart upload whose parts go, through a bounded queue, to
//! a few uploader threads, so memory stays at a few parts per file however
//! large the file. The object appears only when the upload completes
//! (readers see the old one, or none, until then); any failure, and a
//! writer dropped unfinished, aborts the upload so that no part is left
//! behind in the bucket.
//!
//! Parts start at [`FIRST_PART_BYTES`] and double every thousand parts, so
//! that S3's limit of 10,000 parts still allows objects of terabytes.

use std::io::{self, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use super::client::Client;
use crate::storage::StoredWriter;

pub const FIRST_PART_BYTES: usize = 8 << 20;
const PARTS_PER_SIZE: u16 = 1000;
const MAX_PARTS: u16 = 10_000;

pub struct Upload {
    client: Arc<Client>,
    key: String,
    uploaders: usize,
    part: Vec<u8>,
    part_size: usize,
    written: u64,
    next_part: u16,
    multipart: Option<Multipart>,
    finished: bool,
}

/// The state of a multipart upload under way.
struct Multipart {
    id: Arc<str>,
    queue: Option<SyncSender<(u16, Vec<u8>)>>,
    uploaders: Vec<JoinHandle<()>>,
    /// (part number, ETag) of every part uploaded.
    done: Arc<Mutex<Vec<(u16, String)>>>,
    /// The first failure of an uploader.
    failed: Arc<Mutex<Option<io::Error>>>,
}

impl Upload {
    pub fn new(client: Arc<Client>, key: String, uploaders: usize) -> Self {
        Upload {
            client,
            key,
            uploaders: uploaders.max(1),
            part: Vec::new(),
            part_size: FIRST_PART_BYTES,
            written: 0,
            next_part: 1,
            multipart: None,
            finished: false,
        }
    }

    fn start_multipart(&mut self) -> io::Result<()> {
        if self.multipart.is_none() {
            let id: Arc<str> = self.client.create_multipart(&self.key)?.into();
            let (queue, jobs) = mpsc::sync_channel::<(u16, Vec<u8>)>(self.uploaders);
            let jobs = Arc::new(Mutex::new(jobs));
            let done = Arc::new(Mutex::new(Vec::new()));
            let failed = Arc::new(Mutex::new(None));
            let uploaders = (0..self.uploaders)
                .map(|_| {
                    let (client, key, id) = (self.client.clone(), self.key.clone(), id.clone());
                    let (jobs, done, failed) = (jobs.clone(), done.clone(), failed.clone());
                    thread::spawn(move || upload_parts(&client, &key, &id, &jobs, &done, &failed))
                })
                .collect();
            self.multipart = Some(Multipart {
                id,
                queue: Some(queue),
                uploaders,
                done,
                failed,
            });
        }
        Ok(())
    }

    /// Hands the gathered part to the uploaders.
    fn ship_part(&mut self) -> io::Result<()> {
        let number = self.next_part;
        if number > MAX_PARTS {
            return Err(io::Error::other("the file needs more than 10000 parts"));
        }
        self.start_multipart()?;
        let bytes = std::mem::replace(&mut self.part, Vec::with_capacity(self.part_size));
        let multipart = self
            .multipart
            .as_ref()
            .ok_or_else(|| io::Error::other("no upload"))?;
        if let Some(error) = multipart.failure() {
            return Err(error);
        }
        let queue = multipart
            .queue
            .as_ref()
            .ok_or_else(|| io::Error::other("the upload was finished"))?;
        if queue.send((number, bytes)).is_err() {
            return Err(multipart
                .failure()
                .unwrap_or_else(|| io::Error::other("the uploaders stopped")));
        }
        self.next_part += 1;
        if self.next_part % PARTS_PER_SIZE == 1 {
            self.part_size *= 2;
        }
        Ok(())
    }

    fn finish_multipart(&mut self) -> io::Result<()> {
        if !self.part.is_empty() {
            self.ship_part()?;
        }
        let Some(multipart) = self.multipart.as_mut() else {
            return Ok(());
        };
        multipart.stop();
        if let Some(error) = multipart.failure() {
            return Err(error);
        }
        let mut done = std::mem::take(
            &mut *multipart
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        done.sort_unstable();
        let complete = done.len() == usize::from(self.next_part - 1)
            && done
                .iter()
                .enumerate()
                .all(|(i, (n, _))| usize::from(*n) == i + 1);
        if !complete {
            return Err(io::Error::other("a part of the upload is missing"));
        }
        let etags: Vec<String> = done.into_iter().map(|(_, etag)| etag).collect();
        self.client
            .complete_multipart(&self.key, &multipart.id, &etags)
    }

    fn abort(&mut self) {
        if let Some(mut multipart) = self.multipart.take() {
            multipart.stop();
            // Best effort: the error that brought us here is the one to tell.
            let _ = self.client.abort_multipart(&self.key, &multipart.id);
        }
    }
}

impl Multipart {
    /// The uploaders' first failure, itself the first time it is asked
    /// for (so that the edge still sees what kind of failure it was).
    fn failure(&self) -> Option<io::Error> {
        let mut failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        let told = io::Error::other("an earlier part of the upload failed");
        match failed.as_mut() {
            Some(error) => Some(std::mem::replace(error, told)),
            None => None,
        }
    }

    /// Closes the queue and waits for the uploaders to drain it.
    fn stop(&mut self) {
        drop(self.queue.take());
        for uploader in self.uploaders.drain(..) {
            let _ = uploader.join();
        }
    }
}

/// An uploader thread: parts from the queue until it closes; after a
/// failure the rest are only drained.
fn upload_parts(
    client: &Client,
    key: &str,
    id: &str,
    jobs: &Mutex<Receiver<(u16, Vec<u8>)>>,
    done: &Mutex<Vec<(u16, String)>>,
    failed: &Mutex<Option<io::Error>>,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((number, bytes)) = job else {
            return;
        };
        if failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
        {
            continue;
        }
        match client.upload_part(key, id, number, &bytes) {
            Ok(etag) => done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((number, etag)),
            Err(error) => {
                failed
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(error);
            }
        }
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.part_size - self.part.len();
        let taken = room.min(buf.len());
        self.part.extend_from_slice(&buf[..taken]);
        self.written += taken as u64;
        if self.part.len() == self.part_size {
            if let Err(error) = self.ship_part() {
                self.abort();
                return Err(error);
            }
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StoredWriter for Upload {
    fn finish(mut self: Box<Self>) -> io::Result<u64> {
        self.finished = true;
        let result = if self.multipart.is_none() {
            let bytes = std::mem::take(&mut self.part);
            self.client.put(&self.key, &bytes)
        } else {
            self.finish_multipart()
        };
        match result {
            Ok(()) => {
                self.multipart = None;
                Ok(self.written)
            }
            Err(error) => {
                self.abort();
                Err(error)
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Dropped unfinished (an error on the way): nothing may stay behind.
        if !self.finished || self.multipart.is_some() {
            self.abort();
        }
    }
}
