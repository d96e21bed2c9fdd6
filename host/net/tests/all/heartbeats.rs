//! Heartbeats across namespaces: on A and B, then A cut, then both, then healed; forged,
//! replayed, truncated, oversized and misdirected packets dropped and counted.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use halo_core::{Heartbeat, VmReport};
use halo_lab::Lab;
use halo_net::codec::{self, ClusterKey, DropReason, Membership};
use halo_net::{HeartbeatTransport, NetworkEndpoints, Received, TransportConfig};
use tokio::sync::mpsc::Receiver;

const PORT: u16 = 7400;

fn key() -> ClusterKey {
    ClusterKey::new(b"a lab key that is 32 bytes long!").expect("32 bytes")
}

fn membership(lab: &Lab) -> Membership {
    Membership::new((1..=lab.hosts()).map(Lab::host_name).collect())
}

fn config(lab: &Lab, host: usize) -> TransportConfig {
    let networks = ["A", "B"]
        .iter()
        .map(|net| NetworkEndpoints {
            name: (*net).to_string(),
            bind: SocketAddr::from((lab.address(host, net).expect("address"), PORT)),
            peers: (1..=lab.hosts())
                .filter(|&h| h != host)
                .map(|h| (Lab::host_name(h), SocketAddr::from((lab.address(h, net).expect("address"), PORT))))
                .collect(),
            broadcast: None,
            interface: None,
        })
        .collect();
    TransportConfig {
        cluster: "lab".into(),
        me: Lab::host_name(host),
        membership: membership(lab),
        key: key(),
        networks,
    }
}

/// The host's transport, its sockets bound inside its namespace.
fn transport(lab: &Lab, host: usize) -> (HeartbeatTransport, Receiver<Received>) {
    let config = config(lab, host);
    let binds: Vec<(String, SocketAddr)> = config.networks.iter().map(|n| (n.name.clone(), n.bind)).collect();
    let sockets = lab
        .enter(host, move || {
            binds.into_iter().map(|(n, a)| (n, UdpSocket::bind(a).expect("bind in the namespace"))).collect::<Vec<_>>()
        })
        .expect("enter");
    HeartbeatTransport::from_sockets(config, sockets).expect("transport")
}

/// The host's transport sending to each network's broadcast address, bound as the agent binds
/// it.
fn broadcast_transport(lab: &Lab, host: usize) -> (HeartbeatTransport, Receiver<Received>) {
    let mut config = config(lab, host);
    for network in &mut config.networks {
        network.broadcast = Some(SocketAddr::from((lab.broadcast(&network.name).expect("broadcast"), PORT)));
    }
    bound_as_the_agent_does(lab, host, config)
}

/// The host's transport without a broadcast address configured, bound as the agent binds it:
/// it sends to each peer and still hears broadcasts.
fn agent_transport(lab: &Lab, host: usize) -> (HeartbeatTransport, Receiver<Received>) {
    bound_as_the_agent_does(lab, host, config(lab, host))
}

/// `config`'s transport, its sockets bound by `bind_sockets` inside the host's namespace.
fn bound_as_the_agent_does(
    lab: &Lab,
    host: usize,
    config: TransportConfig,
) -> (HeartbeatTransport, Receiver<Received>) {
    let for_binding = config.clone();
    let sockets = lab.enter(host, move || halo_net::bind_sockets(&for_binding).expect("binds")).expect("enter");
    HeartbeatTransport::from_sockets(config, sockets).expect("transport")
}

fn beat(seq: u64) -> Heartbeat {
    Heartbeat {
        from: "host-1".into(),
        seq,
        incarnation: 7,
        master: Some(("host-1".into(), 1)),
        datastores_reachable: 1,
        datastores_lost: vec![],
        health: Default::default(),
        vms: vec![VmReport { vm: "db".into(), generation: 2 }],
        operator_stopped: vec![],
        acks: vec![(1, seq)], // host-2
        maintenance: vec![],
        ha_disabled: false,
        ha_off: false,
        unarmed: vec![],
        stopped: vec![],
        vanished: vec![],
        claims: vec![],
        paused: vec![],
    }
}

/// Sends `rounds` heartbeats from host-1 on both networks, 20 ms apart, and waits a moment.
async fn send_rounds(sender: &HeartbeatTransport, first_seq: u64, rounds: u64) {
    for seq in first_seq..first_seq + rounds {
        for net in ["A", "B"] {
            sender.send(net, &beat(seq)).await.expect("encodes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
}

fn drain(rx: &mut Receiver<Received>) -> Vec<Received> {
    let mut all = Vec::new();
    while let Ok(r) = rx.try_recv() {
        all.push(r);
    }
    all
}

#[test]
fn heartbeats_cross_namespaces_on_a_and_b_then_a_cut_then_both() {
    let Some(lab) = crate::lab("heartbeats", 3) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (sender, _rx1) = transport(&lab, 1);
        let (receiver, mut rx2) = transport(&lab, 2);
        let stats = receiver.stats();

        send_rounds(&sender, 1, 10).await;
        let got = drain(&mut rx2);
        assert_eq!((stats.accepted_on("A"), stats.accepted_on("B")), (10, 10), "both networks carry heartbeats");
        assert!(got.iter().all(|r| *r.heartbeat == beat(r.heartbeat.seq)), "decoded as sent");

        lab.set_link(2, "A", false).expect("cut A");
        send_rounds(&sender, 11, 10).await;
        assert_eq!((stats.accepted_on("A"), stats.accepted_on("B")), (10, 20), "A cut: only B");

        lab.set_link(2, "B", false).expect("cut B");
        send_rounds(&sender, 21, 10).await;
        assert_eq!((stats.accepted_on("A"), stats.accepted_on("B")), (10, 20), "both cut: silence");

        lab.set_link(2, "A", true).expect("heal A");
        lab.set_link(2, "B", true).expect("heal B");
        tokio::time::sleep(Duration::from_millis(200)).await;
        send_rounds(&sender, 31, 5).await;
        assert_eq!((stats.accepted_on("A"), stats.accepted_on("B")), (15, 25), "healed");
        assert_eq!(DropReason::ALL.iter().map(|r| stats.dropped(*r)).sum::<u64>(), 0, "nothing dropped");
        drain(&mut rx2);
    });
}

#[test]
fn forged_replayed_and_broken_packets_are_dropped_and_counted() {
    let Some(lab) = crate::lab("hostile", 3) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (sender, _rx1) = transport(&lab, 1);
        let (receiver, mut rx2) = transport(&lab, 2);
        let stats = receiver.stats();
        send_rounds(&sender, 100, 3).await;
        assert_eq!(stats.accepted(), 6);

        // A replay: an older sequence number from the right address with the right key.
        send_rounds(&sender, 50, 1).await;
        assert_eq!(stats.dropped(DropReason::Replayed), 2, "one per network");

        // host-3 (an attacker inside the cluster's networks) sends raw packets to host-2 on A.
        let target = SocketAddr::from((lab.address(2, "A").expect("address"), PORT));
        let members = membership(&lab);
        let forged_key = ClusterKey::new(&[9; 32]).expect("key");
        let forged = codec::encode(&beat(1_000), "lab", &members, &forged_key).expect("encodes");
        let genuine = codec::encode(&beat(2_000), "lab", &members, &key()).expect("encodes");
        let mut oversized = genuine.clone();
        oversized.resize(codec::MAX_PACKET + 100, 0);
        let packets = vec![
            forged,                                // bad MAC
            genuine[..genuine.len() / 2].to_vec(), // truncated: the MAC no longer matches
            genuine[..10].to_vec(),                // truncated below a header
            oversized,                             // oversized
            b"not a heartbeat at all, just some bytes on the wire....".to_vec(),
            genuine, // valid, but from host-3's address: wrong source
        ];
        lab.enter(3, move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            for p in packets {
                socket.send_to(&p, target).expect("send");
            }
        })
        .expect("enter");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stats.dropped(DropReason::BadMac), 2, "forged and half packet");
        assert_eq!(stats.dropped(DropReason::Truncated), 1);
        assert_eq!(stats.dropped(DropReason::Oversized), 1);
        assert_eq!(stats.dropped(DropReason::NotHalo), 1);
        assert_eq!(stats.dropped(DropReason::WrongSource), 1);
        assert_eq!(stats.accepted(), 6, "nothing hostile got through");
        assert_eq!(drain(&mut rx2).len(), 6);

        // The receiver still works after all that.
        send_rounds(&sender, 200, 1).await;
        assert_eq!(stats.accepted(), 8);
    });
}

fn beat_from(from: &str, seq: u64) -> Heartbeat {
    Heartbeat { from: from.into(), acks: vec![], ..beat(seq) }
}

#[test]
fn a_partition_and_packet_loss_on_the_lab_bridges() {
    let Some(lab) = crate::lab("partition", 3) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (one, _rx1) = transport(&lab, 1);
        let (two, mut rx2) = transport(&lab, 2);
        let (three, _rx3) = transport(&lab, 3);
        let stats = two.stats();
        let round = |seq: u64| {
            let (one, three) = (&one, &three);
            async move {
                for net in ["A", "B"] {
                    one.send(net, &beat_from("host-1", seq)).await.expect("send");
                    three.send(net, &beat_from("host-3", seq)).await.expect("send");
                }
            }
        };
        // host-1 | host-2, host-3: host-2 hears host-3 only.
        lab.partition(&[vec![1], vec![2, 3]]).expect("partition");
        for seq in 1..=5 {
            round(seq).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let heard: Vec<String> = drain(&mut rx2).into_iter().map(|r| r.heartbeat.from.clone()).collect();
        assert_eq!(heard.len(), 10, "{heard:?}");
        assert!(heard.iter().all(|h| h == "host-3"), "{heard:?}");
        lab.heal_partition().expect("heal");
        // Healed: host-1 is heard again once its neighbour entries recover (ARP failed during
        // the partition), within a few seconds.
        let healed = std::time::Instant::now();
        let mut heard_again = false;
        for seq in 6..=60 {
            round(seq).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if drain(&mut rx2).iter().any(|r| r.heartbeat.from == "host-1") {
                heard_again = true;
                break;
            }
        }
        assert!(heard_again, "host-1 is heard again after the partition heals");
        println!("figure: partition healed -> host-1 heard again after {:?}", healed.elapsed());

        // 50 % loss on A only: about half of host-1's heartbeats on A arrive, all on B.
        lab.loss("A", 50).expect("loss");
        let (a0, b0) = (stats.accepted_on("A"), stats.accepted_on("B"));
        for seq in 100..300 {
            for net in ["A", "B"] {
                one.send(net, &beat_from("host-1", seq)).await.expect("send");
            }
            if seq % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                drain(&mut rx2);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (a, b) = (stats.accepted_on("A") - a0, stats.accepted_on("B") - b0);
        println!("figure: 50 % loss on A: {a} of 200 heartbeats arrived on A, {b} of 200 on B");
        assert_eq!(b, 200);
        assert!((40..=160).contains(&a), "{a} of 200 on A");
        lab.heal_loss("A").expect("heal");
        drain(&mut rx2);
    });
}

#[test]
fn broadcast_heartbeats_reach_every_host_with_one_packet_per_network() {
    let Some(lab) = crate::lab("broadcast", 3) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let (one, mut rx1) = broadcast_transport(&lab, 1);
        let (two, mut rx2) = broadcast_transport(&lab, 2);
        // host-3 has no broadcast address configured (a rolling change): it hears the others'
        // broadcasts all the same, and they hear its packets sent to each of them.
        let (three, mut rx3) = agent_transport(&lab, 3);

        send_rounds(&one, 1, 10).await;
        assert_eq!(one.stats().sent(), 20, "one packet per network and round, not one per peer");
        for (rx, peer) in [(&mut rx2, &two), (&mut rx3, &three)] {
            let stats = peer.stats();
            assert_eq!((stats.accepted_on("A"), stats.accepted_on("B")), (10, 10), "both networks, every round");
            let got = drain(rx);
            assert_eq!(got.len(), 20);
            assert!(got.iter().all(|r| *r.heartbeat == beat(r.heartbeat.seq)), "decoded as sent");
        }
        // The sender's own broadcasts come back to it and are passed over, not counted.
        assert_eq!(one.stats().accepted(), 0);
        assert!(drain(&mut rx1).is_empty());
        let dropped = |t: &HeartbeatTransport| DropReason::ALL.iter().map(|r| t.stats().dropped(*r)).sum::<u64>();
        assert_eq!(dropped(&one) + dropped(&two) + dropped(&three), 0, "nothing dropped");

        three.send("A", &beat_from("host-3", 1)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(three.stats().sent(), 2, "one packet to each peer");
        assert_eq!((one.stats().accepted_on("A"), two.stats().accepted_on("A")), (1, 11), "host-3 heard on A");
        for rx in [&mut rx1, &mut rx2] {
            assert_eq!(drain(rx).iter().filter(|r| r.heartbeat.from == "host-3").count(), 1);
        }

        // A cut cable: host-3 hears nothing more on A, host-2 still does.
        lab.set_link(3, "A", false).expect("cut A");
        send_rounds(&one, 11, 5).await;
        assert_eq!((three.stats().accepted_on("A"), three.stats().accepted_on("B")), (10, 15));
        assert_eq!((two.stats().accepted_on("A"), two.stats().accepted_on("B")), (16, 15));
        lab.set_link(3, "A", true).expect("heal A");

        // host-3 broadcasts host-1's genuine packet and a forged one on B: every receiver drops
        // both (wrong source, bad MAC); the broadcast socket checks as the other does.
        let broadcast = SocketAddr::from((lab.broadcast("B").expect("broadcast"), PORT));
        let members = membership(&lab);
        let genuine = codec::encode(&beat(1_000), "lab", &members, &key()).expect("encodes");
        let forged =
            codec::encode(&beat(1_001), "lab", &members, &ClusterKey::new(&[9; 32]).expect("key")).expect("encodes");
        let from = SocketAddr::from((lab.address(3, "B").expect("address"), 0));
        lab.enter(3, move || {
            let socket = UdpSocket::bind(from).expect("bind");
            socket.set_broadcast(true).expect("broadcast");
            for p in [genuine, forged] {
                socket.send_to(&p, broadcast).expect("send");
            }
        })
        .expect("enter");
        tokio::time::sleep(Duration::from_millis(200)).await;
        for peer in [&one, &two] {
            assert_eq!(peer.stats().dropped(DropReason::WrongSource), 1);
            assert_eq!(peer.stats().dropped(DropReason::BadMac), 1);
        }
        assert_eq!(two.stats().accepted(), 31, "nothing hostile got through");
        drain(&mut rx2);
        drain(&mut rx3);
    });
}

/// Networks on one subnet (the lab's shared layout: a host has the same address on A and B,
/// each on its own segment). Bound to their interfaces, A's heartbeats travel on A only and
/// B's on B only, whatever the routing table prefers (it sends the subnet over M): with
/// host-2's A cable pulled, host-2 hears host-1 on B and not on A, and host-3 still on both.
/// Unbound, the two networks' sockets cannot even be told apart (same address and port).
#[test]
fn networks_on_one_subnet_stay_on_their_own_links_when_bound_to_their_interfaces() {
    let Some(lab) = crate::shared_lab("interfaces", 3) else { return };
    assert_eq!(lab.address(2, "A").expect("A"), lab.address(2, "B").expect("B"), "one address on both");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let bound = |host: usize| {
            let mut config = config(&lab, host);
            for network in &mut config.networks {
                network.broadcast = Some(SocketAddr::from((lab.broadcast(&network.name).expect("broadcast"), PORT)));
                network.interface = Some(Lab::interface(&network.name));
            }
            bound_as_the_agent_does(&lab, host, config)
        };
        let (one, _rx1) = bound(1);
        let (two, mut rx2) = bound(2);
        let (three, mut rx3) = bound(3);

        send_rounds(&one, 1, 10).await;
        for peer in [&two, &three] {
            assert_eq!((peer.stats().accepted_on("A"), peer.stats().accepted_on("B")), (10, 10), "each network once");
        }
        lab.set_link(2, "A", false).expect("cut A");
        send_rounds(&one, 11, 10).await;
        assert_eq!((two.stats().accepted_on("A"), two.stats().accepted_on("B")), (10, 20), "A cut: B only");
        assert_eq!((three.stats().accepted_on("A"), three.stats().accepted_on("B")), (20, 20), "host-3 both");
        // Sent from host-2 while its A cable is out: nothing of A arrives anywhere.
        two.send("A", &beat_from("host-2", 1)).await.expect("send");
        two.send("B", &beat_from("host-2", 1)).await.expect("send");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            (three.stats().accepted_on("A"), three.stats().accepted_on("B")),
            (20, 21),
            "host-2 heard on B only"
        );
        lab.set_link(2, "A", true).expect("heal A");
        let dropped = |t: &HeartbeatTransport| DropReason::ALL.iter().map(|r| t.stats().dropped(*r)).sum::<u64>();
        assert_eq!(dropped(&two) + dropped(&three), 0, "nothing dropped");
        drain(&mut rx2);
        drain(&mut rx3);

        // Without `interface`, A's socket and B's are the same address and port: refused.
        drop(one);
        tokio::time::sleep(Duration::from_millis(50)).await; // its receive task ends, closing its sockets
        let unbound = config(&lab, 1);
        let refused =
            lab.enter(1, move || halo_net::bind_sockets(&unbound).err().map(|e| e.to_string())).expect("enter");
        let refused = refused.expect("the second network's socket cannot be bound");
        assert!(refused.contains("network B") && refused.contains("in use"), "{refused}");
    });
}

#[test]
fn a_broadcast_address_not_of_this_hosts_network_is_refused_with_what_to_fix() {
    let config = TransportConfig {
        cluster: "lab".into(),
        me: "host-1".into(),
        membership: Membership::new(vec!["host-1".into(), "host-2".into()]),
        key: key(),
        networks: vec![NetworkEndpoints {
            name: "A".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: vec![("host-2".into(), SocketAddr::from(([127, 0, 0, 1], 7399)))],
            // No interface of this machine has it (the tests use 10.213.37.0/24 in namespaces).
            broadcast: Some(SocketAddr::from(([10, 213, 99, 255], PORT))),
            interface: None,
        }],
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let error = runtime.block_on(async { HeartbeatTransport::bind(config).err().expect("refused") });
    assert!(matches!(error, halo_net::TransportError::BindBroadcast { .. }), "{error}");
    let text = error.to_string();
    assert!(text.contains("check `broadcast.A` in halo.toml"), "{text}");
}
