//! Hostile-operator attacks on this session's bounded whole-file reads of the local backend
//! (`read_data`, `read_data_max`, the look-then-`openat2` fast path without `fstat`) and on
//! `BackendPath`'s ASCII fast path. Files are swapped between the look and the open by a
//! thread that races the reads. Each test says `HOLDS` when the attack held.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use keepsake_backend::{Backend, BackendPath, Error, LocalBackend, SyncLevel};

fn p(path: &str) -> BackendPath {
    path.parse().unwrap()
}

/// A backend on `<dir>/store` with the folder `g/` made.
fn store(dir: &Path) -> LocalBackend {
    fs::create_dir_all(dir.join("store/g")).unwrap();
    LocalBackend::open(dir.join("store"), SyncLevel::None).unwrap()
}

/// Runs `swap` in a loop on another thread until `reads` returns, then stops it.
fn racing<T>(mut swap: impl FnMut() + Send + 'static, reads: impl FnOnce() -> T) -> T {
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = Arc::clone(&stop);
    let swapper = thread::spawn(move || {
        while !stopper.load(Ordering::Relaxed) {
            swap();
        }
    });
    let out = reads();
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    out
}

/// How long each race runs: enough for many thousands of swaps on two cores.
const RACE: Duration = Duration::from_millis(1500);

/// HOLDS: the file is replaced by rename, again and again, by one of another size (the fast
/// path's look then sees one size and the open finds the other file). Every read returns one
/// file whole, or (with a bound between the two sizes) `TooLarge`: never a mix, never a file
/// cut to the other's size, never more than the bound.
#[test]
fn a_file_replaced_by_one_of_another_size_is_read_whole_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let backend = store(dir.path());
    let small = vec![b's'; 1000];
    let large = vec![b'L'; 3000];
    let folder = dir.path().join("store/g");
    fs::write(folder.join("f"), &small).unwrap();
    let (s, l) = (small.clone(), large.clone());
    let swap_folder = folder.clone();
    let counts = racing(
        move || {
            fs::write(swap_folder.join(".s"), &s).unwrap();
            fs::rename(swap_folder.join(".s"), swap_folder.join("f")).unwrap();
            fs::write(swap_folder.join(".l"), &l).unwrap();
            fs::rename(swap_folder.join(".l"), swap_folder.join("f")).unwrap();
        },
        || {
            let (mut whole, mut refused) = (0, 0);
            let end = Instant::now() + RACE;
            while Instant::now() < end {
                let data = backend.read_data(&p("g/f")).unwrap();
                assert!(
                    data == small || data == large,
                    "a mixed read: {}",
                    data.len()
                );
                match backend.read_data_max(&p("g/f"), 2000) {
                    Ok(data) => assert_eq!(data, small),
                    Err(Error::TooLarge { limit: 2000, .. }) => refused += 1,
                    Err(e) => panic!("{e:?}"),
                }
                whole += 1;
            }
            (whole, refused)
        },
    );
    assert!(counts.0 > 100 && counts.1 > 0, "{counts:?}");
}

/// HOLDS: the file is swapped, again and again, for a symbolic link to a file outside the
/// datastore of exactly its size (so the look's size matches whatever the open would find):
/// no read ever returns the outside file's bytes.
#[test]
fn a_symlink_swapped_in_never_reads_outside() {
    let dir = tempfile::tempdir().unwrap();
    let backend = store(dir.path());
    let secret = dir.path().join("secret");
    fs::write(&secret, [b'S'; 512]).unwrap();
    let inside = [b'i'; 512];
    let folder = dir.path().join("store/g");
    fs::write(folder.join("f"), inside).unwrap();
    let swap_folder = folder.clone();
    let swap_secret = secret.clone();
    let seen = racing(
        move || {
            let _ = fs::remove_file(swap_folder.join(".l"));
            symlink(&swap_secret, swap_folder.join(".l")).unwrap();
            fs::rename(swap_folder.join(".l"), swap_folder.join("f")).unwrap();
            fs::write(swap_folder.join(".r"), inside).unwrap();
            fs::rename(swap_folder.join(".r"), swap_folder.join("f")).unwrap();
        },
        || {
            let (mut ok, mut err) = (0, 0);
            let end = Instant::now() + RACE;
            while Instant::now() < end {
                for read in [
                    backend.read_data(&p("g/f")),
                    backend.read_data_max(&p("g/f"), 4096),
                    backend.read(&p("g/f")).map(|c| c.data),
                ] {
                    match read {
                        Ok(data) => {
                            assert_eq!(data, inside, "read through the link");
                            ok += 1;
                        }
                        Err(_) => err += 1,
                    }
                }
            }
            (ok, err)
        },
    );
    assert!(seen.0 > 0 && seen.1 > 0, "{seen:?}");
}

/// HOLDS: the file is swapped, again and again, for a FIFO whose writer holds it open and
/// writes nothing (the look sees the regular file's size, the open finds the FIFO): no read
/// hangs, and none returns anything but the file.
#[test]
fn a_fifo_swapped_in_never_hangs_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let backend = store(dir.path());
    let folder = dir.path().join("store/g");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Read and write: opening does not wait for a reader, and the FIFO always has a writer.
    let _writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let content = [b'c'; 100];
    fs::write(folder.join("f"), content).unwrap();
    let swap_folder = folder.clone();
    let swap_fifo = fifo.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        racing(
            move || {
                // A hard link to the FIFO renamed over the file, then the file back.
                let _ = fs::remove_file(swap_folder.join(".p"));
                fs::hard_link(&swap_fifo, swap_folder.join(".p")).unwrap();
                fs::rename(swap_folder.join(".p"), swap_folder.join("f")).unwrap();
                fs::write(swap_folder.join(".r"), content).unwrap();
                fs::rename(swap_folder.join(".r"), swap_folder.join("f")).unwrap();
            },
            || {
                let end = Instant::now() + RACE;
                let mut reads = 0;
                while Instant::now() < end {
                    for read in [
                        backend.read_data(&p("g/f")),
                        backend.read_data_max(&p("g/f"), 4096),
                    ] {
                        if let Ok(data) = read {
                            assert_eq!(data, content);
                        }
                        reads += 1;
                    }
                }
                reads
            },
        )
    });
    thread::spawn(move || tx.send(reader.join()));
    let reads = rx
        .recv_timeout(RACE * 20)
        .expect("a read hung on the FIFO")
        .unwrap();
    assert!(reads > 100, "{reads}");
}

/// HOLDS: a file that grows while it is read (a writer appending without pause): a bounded read
/// returns at most its bound, else `TooLarge`; an unbounded one returns a prefix that was there.
#[test]
fn a_growing_file_never_yields_more_than_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let backend = store(dir.path());
    let file = dir.path().join("store/g/f");
    fs::write(&file, [7u8; 100]).unwrap();
    let grow = file.clone();
    let writer = fs::OpenOptions::new().append(true).open(&grow).unwrap();
    let results = racing(
        move || {
            use std::io::Write;
            (&writer).write_all(&[7u8; 4096]).unwrap();
            if writer.metadata().unwrap().len() > 64 << 20 {
                writer.set_len(100).unwrap();
            }
        },
        || {
            let end = Instant::now() + RACE;
            let (mut ok, mut refused) = (0, 0);
            while Instant::now() < end {
                match backend.read_data_max(&p("g/f"), 1 << 20) {
                    Ok(data) => {
                        assert!(data.len() <= 1 << 20, "{}", data.len());
                        assert!(data.iter().all(|&b| b == 7));
                        ok += 1;
                    }
                    Err(Error::TooLarge { .. }) => refused += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            (ok, refused)
        },
    );
    assert!(results.0 + results.1 > 10, "{results:?}");
}

/// HOLDS: the ASCII fast path of the component check refuses exactly what the `char` rule
/// refuses: C0 and DEL in ASCII names, C1 controls (U+0080..=U+009F) in non-ASCII ones, next to
/// ASCII and non-ASCII neighbours; `TryFrom<String>` agrees with `new` at the length limit.
#[test]
fn the_component_fast_path_refuses_what_the_char_rule_refuses() {
    for c in (0u32..0x3000).chain([0xFEFF, 0x2028, 0x1F600, 0xE0001, 0x10FFFF]) {
        let Some(c) = char::from_u32(c) else { continue };
        if c == '/' {
            continue;
        }
        for name in [format!("a{c}b"), format!("é{c}"), format!("{c}")] {
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("g/{name}");
            let want = !name.chars().any(char::is_control);
            assert_eq!(
                BackendPath::new(&path).is_ok(),
                want,
                "{:?} (U+{:04X})",
                name,
                c as u32
            );
            assert_eq!(
                BackendPath::try_from(path.clone()).is_ok(),
                want,
                "{name:?}"
            );
        }
    }
    for len in [1023, 1024, 1025] {
        let path = format!(
            "g/{}",
            "é".repeat((len - 2) / 2) + &"x".repeat((len - 2) % 2)
        );
        assert_eq!(path.len(), len);
        assert_eq!(
            BackendPath::new(&path).is_ok(),
            BackendPath::try_from(path.clone()).is_ok(),
            "{len}"
        );
    }
}

/// FOUND (fixed: `MAX_CHUNK_READ`; the text below is what the review saw).
/// A chunk is a blob (at most PBS's 128 MiB and a header; PBS's own chunks at most 16 MiB), yet
/// `read_chunk` reads a chunk file with the 4 GiB bound of any file: a hostile sparse chunk
/// file of 512 MiB is read whole and returned (the caller finds it corrupt only after holding
/// it); one just under 4 GiB costs 4 GiB per chunk read, times the reader's threads (verify,
/// sync, restore read ahead in parallel). The manifest got the blob bound in this session; the
/// chunk, read far more often, did not.
#[test]
fn a_sparse_chunk_larger_than_any_blob_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let backend = store(dir.path());
    let digest = keepsake_backend::ChunkDigest::new([0xab; 32]);
    let file = dir.path().join("store").join(digest.local_path().as_str());
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::File::create(&file).unwrap().set_len(512 << 20).unwrap();
    match backend.read_chunk(&digest) {
        Err(Error::TooLarge { .. }) => {}
        Ok(data) => panic!("a chunk of {} MiB was read whole", data.len() >> 20),
        Err(e) => panic!("{e:?}"),
    }
}
