//! Packet framing as Sluice reads it from a socket: frame headers, packets split over several
//! frames, packets past the size limit, a peer that stops half-way. The input is what the peer
//! sends over a real loopback connection; the first byte picks how it is read.
#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sluice::protocol::codec::PacketStream;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bytes = bytes.to_vec();
        let writer = std::thread::spawn(move || {
            if let Ok(mut s) = std::net::TcpStream::connect(addr) {
                let _ = s.write_all(&bytes);
            }
        });
        let (socket, _) = listener.accept().await.expect("accept");
        let mut stream = PacketStream::new(socket).expect("stream");
        let max = 1 + usize::from(mode) * 97;
        let limit = std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(limit, async {
            loop {
                let r = match mode % 3 {
                    0 => stream.read_packet(max).await.map(|(_, p)| p.len()),
                    1 => stream.skip_packet(max).await,
                    _ => stream.frame_header().await.map(|(len, _)| {
                        stream.consume(4);
                        len.min(stream.buffered().len())
                    }),
                };
                if r.is_err() {
                    break;
                }
            }
        })
        .await;
        let _ = writer.join();
    });
});
