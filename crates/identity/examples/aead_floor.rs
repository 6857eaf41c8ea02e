//! The cipher's floor under the mesh's record sizes: how long ring takes to seal and open one
//! TLS record with each TLS 1.3 AEAD, with nothing else around it (no sockets, no buffers of
//! rustls's). What a TLS hop costs above this is copies, allocations and system calls, not
//! cryptography; `tls::mesh_provider`'s order (AES-128-GCM first) comes from these figures.
//!
//! ```sh
//! cargo run --release -p stratus-identity --example aead_floor
//! ```

use std::hint::black_box;
use std::time::Instant;

use ring::aead::{
    Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};

/// Bodies the gateway benchmarks use (13 B and 16 KiB, TLS's largest record).
const SIZES: [usize; 2] = [13, 16 * 1024];
/// Enough repetitions that a 13 B record's time is read over tens of milliseconds.
const ROUNDS: u32 = 200_000;

fn main() {
    for (name, algorithm) in [
        ("AES-128-GCM", &AES_128_GCM),
        ("AES-256-GCM", &AES_256_GCM),
        ("ChaCha20-Poly1305", &CHACHA20_POLY1305),
    ] {
        let key = vec![7u8; algorithm.key_len()];
        let key =
            LessSafeKey::new(UnboundKey::new(algorithm, &key).expect("a key of the right length"));
        for size in SIZES {
            let rounds = if size > 1024 { ROUNDS / 50 } else { ROUNDS };
            let mut record = vec![0u8; size];
            let started = Instant::now();
            for round in 0..rounds {
                let tag = key
                    .seal_in_place_separate_tag(nonce(round), Aad::empty(), &mut record)
                    .expect("seal");
                black_box(&tag);
            }
            let seal = started.elapsed() / rounds;
            // Open what was sealed: a valid tag each time, so the whole check runs.
            let mut sealed = vec![0u8; size];
            let tag = key
                .seal_in_place_separate_tag(nonce(0), Aad::empty(), &mut sealed)
                .expect("seal");
            sealed.extend_from_slice(tag.as_ref());
            let mut buffer = sealed.clone();
            let started = Instant::now();
            for _ in 0..rounds {
                buffer.copy_from_slice(&sealed);
                let plain = key
                    .open_in_place(nonce(0), Aad::empty(), &mut buffer)
                    .expect("open");
                black_box(plain);
            }
            let open = started.elapsed() / rounds;
            println!("{name:18} {size:6} B: seal {seal:>9.2?}, open {open:>9.2?} (with a copy in)");
        }
    }
}

fn nonce(round: u32) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[8..].copy_from_slice(&round.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}
