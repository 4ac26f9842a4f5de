//! The frame splitter on the shapes the data path sees: a result set of many
//! small rows, and an extended-protocol batch from a client.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::protocol::frames::{client_streamable, server_streamable, FrameScanner, Piece};
use std::hint::black_box;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn scan_all(scanner: &mut FrameScanner, buf: &[u8]) -> usize {
    let mut pos = 0;
    let mut frames = 0;
    loop {
        match scanner.next(buf, pos).expect("valid stream") {
            Piece::NeedMore => return frames,
            Piece::Frame { len, .. } | Piece::Head { len, .. } | Piece::Tail { len } => {
                pos += len;
                frames += 1;
            }
        }
    }
}

fn result_set(c: &mut Criterion) {
    let mut buf = msg(b'T', &[0u8; 60]);
    for _ in 0..1000 {
        buf.extend(msg(b'D', &[7u8; 40]));
    }
    buf.extend(msg(b'C', b"SELECT 1000\0"));
    buf.extend(msg(b'Z', b"I"));
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1003));
    group.bench_function("server_result_1000_rows", |b| {
        let mut sc = FrameScanner::new(1 << 24, server_streamable);
        b.iter(|| scan_all(&mut sc, black_box(&buf)))
    });
    let mut batch = Vec::new();
    batch.extend(msg(
        b'P',
        b"\0SELECT abalance FROM pgbench_accounts WHERE aid = $1\0\0\0",
    ));
    batch.extend(msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x0512345\0\0"));
    batch.extend(msg(b'D', b"P\0"));
    batch.extend(msg(b'E', b"\0\0\0\0\0"));
    batch.extend(msg(b'S', b""));
    group.throughput(Throughput::Elements(5));
    group.bench_function("client_extended_batch", |b| {
        let mut sc = FrameScanner::new(1 << 24, client_streamable);
        b.iter(|| scan_all(&mut sc, black_box(&batch)))
    });
    group.finish();
}

criterion_group!(benches, result_set);
criterion_main!(benches);
