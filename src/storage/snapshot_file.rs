//! The snapshot file format: a framed, checksummed dump of one group's state
//! machine tree at one applied log id.
//!
//! ```text
//! "SPRSNAP1"
//! frame*: len(u32 LE) crc32(u32 LE) payload(len bytes)
//! payloads (postcard): Header{group_id, meta}, then Pairs(Vec<(key, value)>)…, then End{pairs_len}
//! ```
//!
//! A file is written to a temporary name, fsynced, renamed, and its folder
//! fsynced; a reader refuses a file with a bad magic, a bad checksum, or no
//! End frame, so a torn file is never mistaken for a snapshot.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"SPRSNAP1";
/// Bound on one frame, so a corrupt length cannot make a reader allocate
/// without limit.
const FRAME_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Pairs per frame when writing.
const PAIRS_BYTES_PER_FRAME: usize = 1024 * 1024;

/// A durable snapshot file; the snapshot data openraft passes around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

/// Key-value pairs of the state machine tree.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Serialize, Deserialize)]
enum Frame {
    Header { group_id: u64, meta: SnapshotMeta },
    Pairs(Pairs),
    End { pairs_len: u64 },
}

/// Writes a snapshot file frame by frame.
pub struct SnapshotWriter {
    temp_path: PathBuf,
    final_path: PathBuf,
    out: BufWriter<File>,
    pending: Pairs,
    pending_bytes: usize,
    pairs_len: u64,
}

impl SnapshotWriter {
    pub fn create(final_path: PathBuf, group_id: u64, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        let temp_path = final_path.with_extension("tmp");
        let mut out = BufWriter::new(File::create(&temp_path)?);
        out.write_all(MAGIC)?;
        let mut writer =
            SnapshotWriter { temp_path, final_path, out, pending: Vec::new(), pending_bytes: 0, pairs_len: 0 };
        writer.write_frame(&Frame::Header { group_id, meta: meta.clone() })?;
        Ok(writer)
    }

    pub fn push(&mut self, key: Vec<u8>, value: Vec<u8>) -> io::Result<()> {
        self.pending_bytes += key.len() + value.len() + 8;
        self.pending.push((key, value));
        self.pairs_len += 1;
        if self.pending_bytes >= PAIRS_BYTES_PER_FRAME {
            self.flush_pairs()?;
        }
        Ok(())
    }

    fn flush_pairs(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pairs = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.write_frame(&Frame::Pairs(pairs))
    }

    fn write_frame(&mut self, frame: &Frame) -> io::Result<()> {
        let payload = postcard::to_stdvec(frame).map_err(io::Error::other)?;
        let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("snapshot frame too large"))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        self.out.write_all(&payload)
    }

    /// Ends the file, makes it durable and gives it its final name.
    pub fn finish(mut self) -> io::Result<SnapshotFile> {
        self.flush_pairs()?;
        let pairs_len = self.pairs_len;
        self.write_frame(&Frame::End { pairs_len })?;
        let file = self.out.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp_path, &self.final_path)?;
        sync_dir(self.final_path.parent().unwrap_or(Path::new(".")))?;
        Ok(SnapshotFile { path: self.final_path })
    }
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a snapshot file, checking every frame.
pub struct SnapshotReader {
    input: BufReader<File>,
    pub group_id: u64,
    pub meta: SnapshotMeta,
    pairs_read: u64,
    ended: bool,
}

fn corrupt(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot file {} is corrupt: {why}", path.display()))
}

impl SnapshotReader {
    pub fn open(path: &Path) -> io::Result<SnapshotReader> {
        let mut input = BufReader::new(File::open(path)?);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(|_| corrupt(path, "too short"))?;
        if &magic != MAGIC {
            return Err(corrupt(path, "not a spaceraft snapshot (bad magic)"));
        }
        let header = read_frame(&mut input).map_err(|e| corrupt(path, e))?;
        let Frame::Header { group_id, meta } = header else {
            return Err(corrupt(path, "first frame is not a header"));
        };
        Ok(SnapshotReader { input, group_id, meta, pairs_read: 0, ended: false })
    }

    /// The next batch of pairs; `None` after the End frame.
    pub fn next_pairs(&mut self) -> io::Result<Option<Pairs>> {
        if self.ended {
            return Ok(None);
        }
        match read_frame(&mut self.input)? {
            Frame::Pairs(pairs) => {
                self.pairs_read += pairs.len() as u64;
                Ok(Some(pairs))
            }
            Frame::End { pairs_len } => {
                if pairs_len != self.pairs_read {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot holds {} pairs but its end frame says {pairs_len}", self.pairs_read),
                    ));
                }
                self.ended = true;
                Ok(None)
            }
            Frame::Header { .. } => Err(io::Error::new(io::ErrorKind::InvalidData, "second header in snapshot")),
        }
    }
}

fn read_frame(input: &mut impl Read) -> io::Result<Frame> {
    let mut head = [0u8; 8];
    input.read_exact(&mut head).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "truncated frame header"))?;
    let len = u32::from_le_bytes(head[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds the bound")));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "truncated frame"))?;
    if crc32fast::hash(&payload) != crc {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame checksum mismatch"));
    }
    postcard::from_bytes(&payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad frame: {e}")))
}

/// Checks a whole file (every frame, and every record's own checksum: a
/// record damaged in the tree it was built from must not spread through
/// the snapshot) and returns its header.
pub fn verify(path: &Path) -> io::Result<(u64, SnapshotMeta)> {
    let mut reader = SnapshotReader::open(path)?;
    while let Some(pairs) = reader.next_pairs().map_err(|e| corrupt(path, e))? {
        for (key, value) in &pairs {
            if let Err(error) = crate::kv::verify(value) {
                return Err(corrupt(path, format!("record {}: {error}", String::from_utf8_lossy(key))));
            }
        }
    }
    Ok((reader.group_id, reader.meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_whose_frames_hold_a_damaged_record_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let meta = SnapshotMeta::default();
        let write = |name: &str, value: Vec<u8>| {
            let mut writer = SnapshotWriter::create(dir.path().join(name), 3, &meta).unwrap();
            writer.push(b"sgeneral".to_vec(), crate::kv::encode(&1u64)).unwrap();
            writer.push(b"srandom".to_vec(), value).unwrap();
            writer.finish().unwrap();
            dir.path().join(name)
        };
        let good = write("good.bin", crate::kv::encode(&2u64));
        assert_eq!(verify(&good).unwrap().0, 3);
        let mut damaged = crate::kv::encode(&2u64);
        *damaged.last_mut().unwrap() ^= 0x01;
        let bad = write("bad.bin", damaged);
        let error = verify(&bad).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let text = error.to_string();
        assert!(text.contains("record srandom"), "{text}");
    }
}
