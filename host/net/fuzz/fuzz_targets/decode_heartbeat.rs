//! Any bytes off the network: the decoder answers (a heartbeat or a drop reason), never
//! panics; and whatever it accepts encodes back to a packet that decodes to the same thing.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run decode_heartbeat` in `host/net` (see docs/fuzzing.md).

#![no_main]

use halo_net::codec::{self, ClusterKey, Membership};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::new(&[7; 32]).expect("32 bytes");
    let members = Membership::new((1..=5).map(|i| format!("host-{i}")).collect());
    // Two ways in: raw bytes (mostly rejected by the MAC), and bytes signed with the key, so
    // the field decoder behind the MAC is exercised too.
    let _ = codec::decode(data, "prod", &members, &key);
    let signed = codec::sign_for_fuzzing(data, &key);
    if let Ok(decoded) = codec::decode(&signed, "prod", &members, &key) {
        let again = codec::encode(&decoded.heartbeat, "prod", &members, &key).expect("an accepted heartbeat re-encodes");
        let back = codec::decode(&again, "prod", &members, &key).expect("and decodes");
        assert_eq!(back.heartbeat, decoded.heartbeat);
    }
});
