//! A closed network's allowlist while the nodes run: a newer list from the operator (handed to
//! the node or published on the allowlist topic) disconnects the peers it drops; an old list
//! replayed, or one signed by someone else, is refused; an expired list refuses everyone; TCP
//! and QUIC alike.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use libp2p::identity::{Keypair, ed25519};
use streamspace_shard::store::MemoryStore;
use streamspace_transport::allowlist::{self, AllowlistError, SignedAllowlist};
use streamspace_transport::message::{Request, Response};
use streamspace_transport::meter::Free;
use streamspace_transport::{Admission, Config, Multiaddr, Node, NodeError, NodeEvent, PeerId};

const NETWORK: &str = "studio";

fn list(operator: &ed25519::Keypair, secs: u64, peers: &[&Keypair]) -> SignedAllowlist {
    SignedAllowlist::sign(
        operator,
        NETWORK,
        SystemTime::now() + Duration::from_secs(secs),
        peers.iter().map(|k| k.public().to_peer_id()),
    )
}

fn member_config(k: &Keypair, operator: &ed25519::Keypair, list: &SignedAllowlist) -> Config {
    let mut c = Config::new(k.clone()).loopback();
    c.network = NETWORK.into();
    c.request_timeout = Duration::from_secs(5);
    c.admission = Some(Admission {
        operator: operator.public(),
        list: list.clone(),
    });
    c
}

async fn start(c: Config) -> Node<MemoryStore> {
    Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free))
        .await
        .unwrap()
}

async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..2000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn connected(a: &Node<MemoryStore>, b: PeerId) -> bool {
    a.connected_peers().await.unwrap().contains(&b)
}

async fn next_update(events: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> NodeEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(e @ (NodeEvent::AllowlistUpdated { .. } | NodeEvent::AllowlistExpired)) => {
                    return e;
                }
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("an allowlist event")
}

/// `a` took a newer list of two peers that drops one, `gone`, and no longer holds a
/// connection to it.
async fn dropped_one(
    a: &Node<MemoryStore>,
    events: &mut tokio::sync::broadcast::Receiver<NodeEvent>,
    gone: PeerId,
) {
    assert_eq!(
        next_update(events).await,
        NodeEvent::AllowlistUpdated {
            peers: 2,
            removed: 1
        }
    );
    until("the dropped peer is disconnected", async || {
        !connected(a, gone).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_list_disconnects_the_peers_it_drops_and_old_lists_are_refused() {
    let operator = ed25519::Keypair::generate();
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let first = list(&operator, 3600, &[&keys[0], &keys[1], &keys[2]]);
    let a = start(member_config(&keys[0], &operator, &first)).await;
    let b = start(member_config(&keys[1], &operator, &first)).await;
    let c = start(member_config(&keys[2], &operator, &first)).await;
    let addr = a.dialable_addrs().await.unwrap()[0].clone();
    b.dial(addr.clone()).await.unwrap();
    c.dial(addr.clone()).await.unwrap();
    until("both members are connected", async || {
        connected(&a, b.peer_id()).await && connected(&a, c.peer_id()).await
    })
    .await;

    // The operator drops C.
    let mut events = a.events();
    let second = list(&operator, 7200, &[&keys[0], &keys[1]]);
    a.update_allowlist(second.clone()).await.unwrap();
    dropped_one(&a, &mut events, c.peer_id()).await;
    // C cannot come back, B is still served.
    let _ = c.dial(addr.clone()).await;
    let asked = c.request(a.peer_id(), Request::Status).await;
    assert!(asked.is_err(), "{asked:?}");
    assert!(matches!(
        b.request(a.peer_id(), Request::Status).await,
        Ok(Response::Status { .. })
    ));

    // Replaying the first list (which expires sooner) would readmit C: refused.
    match a.update_allowlist(first.clone()).await {
        Err(NodeError::Allowlist(AllowlistError::NotNewer)) => {}
        other => panic!("old list taken: {other:?}"),
    }
    // A list signed by another key: refused.
    let forged = list(&ed25519::Keypair::generate(), 9000, &[&keys[0], &keys[2]]);
    match a.update_allowlist(forged).await {
        Err(NodeError::Allowlist(AllowlistError::WrongOperator)) => {}
        other => panic!("forged list taken: {other:?}"),
    }
    // The refusals were logged; C is still out.
    let _ = c.dial(addr).await;
    assert!(c.request(a.peer_id(), Request::Status).await.is_err());
    assert!(a.stats().refused_connections >= 1);

    // An open network has no list to update.
    let open = start(Config::new(Keypair::generate_ed25519()).loopback()).await;
    assert!(matches!(
        open.update_allowlist(second).await,
        Err(NodeError::Open)
    ));
    for n in [&a, &b, &c, &open] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_published_on_the_topic_is_taken_and_a_forged_one_is_not() {
    let operator = ed25519::Keypair::generate();
    let keys: Vec<Keypair> = (0..3).map(|_| Keypair::generate_ed25519()).collect();
    let first = list(&operator, 3600, &[&keys[0], &keys[1], &keys[2]]);
    let a = start(member_config(&keys[0], &operator, &first)).await;
    let b = start(member_config(&keys[1], &operator, &first)).await;
    let c = start(member_config(&keys[2], &operator, &first)).await;
    let addr = a.dialable_addrs().await.unwrap()[0].clone();
    b.dial(addr.clone()).await.unwrap();
    c.dial(addr).await.unwrap();
    let topic = allowlist::topic(NETWORK);
    let mut events = a.events();

    // C, a member about to be dropped, publishes a list of its own making: not taken.
    let forged = list(&ed25519::Keypair::generate(), 9000, &[&keys[0], &keys[2]]);
    let publish = async |n: &Node<MemoryStore>, l: &SignedAllowlist| {
        // The topic's mesh forms within a few heartbeats of the connection.
        until("the topic has peers", async || {
            n.publish(&topic, l.encode()).await.is_ok()
        })
        .await;
    };
    publish(&c, &forged).await;
    // B relays the operator's new list (anyone may carry it; the operator signed it).
    let second = list(&operator, 7200, &[&keys[0], &keys[1]]);
    publish(&b, &second).await;
    dropped_one(&a, &mut events, c.peer_id()).await;
    assert!(connected(&a, b.peer_id()).await);
    for n in [&a, &b, &c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_list_refuses_everyone_until_a_newer_one_over_quic_too() {
    let operator = ed25519::Keypair::generate();
    let keys: Vec<Keypair> = (0..2).map(|_| Keypair::generate_ed25519()).collect();
    let short = list(&operator, 3, &[&keys[0], &keys[1]]);
    let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
    let mut ac = member_config(&keys[0], &operator, &short);
    ac.listen = vec![quic.clone()];
    let a = start(ac).await;
    let mut events = a.events();
    let mut bc = member_config(&keys[1], &operator, &short);
    bc.listen = vec![quic];
    let b = start(bc).await;
    let addr = a.dialable_addrs().await.unwrap()[0].clone();
    assert!(addr.to_string().contains("quic-v1"), "{addr}");
    b.dial(addr.clone()).await.unwrap();
    assert!(matches!(
        b.request(a.peer_id(), Request::Status).await,
        Ok(Response::Status { .. })
    ));
    // The list runs out: B is disconnected and refused.
    assert_eq!(next_update(&mut events).await, NodeEvent::AllowlistExpired);
    until("B is disconnected", async || {
        !connected(&a, b.peer_id()).await
    })
    .await;
    let _ = b.dial(addr.clone()).await;
    assert!(b.request(a.peer_id(), Request::Status).await.is_err());
    // A newer list lets B in again.
    a.update_allowlist(list(&operator, 3600, &[&keys[0], &keys[1]]))
        .await
        .unwrap();
    assert!(matches!(
        next_update(&mut events).await,
        NodeEvent::AllowlistUpdated { peers: 2, .. }
    ));
    // B's own copy expired too; it takes the newer list before dialing.
    b.update_allowlist(list(&operator, 3600, &[&keys[0], &keys[1]]))
        .await
        .unwrap();
    b.dial(addr).await.unwrap();
    assert!(matches!(
        b.request(a.peer_id(), Request::Status).await,
        Ok(Response::Status { .. })
    ));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_network_refuses_to_join_the_public_dht() {
    let operator = ed25519::Keypair::generate();
    let k = Keypair::generate_ed25519();
    let mut c = member_config(&k, &operator, &list(&operator, 3600, &[&k]));
    c.amino_dht = true;
    match Node::start(c, Arc::new(MemoryStore::new()), Arc::new(Free)).await {
        Err(NodeError::Transport(why)) => assert!(why.contains("amino_dht"), "{why}"),
        other => panic!("started: {other:?}"),
    }
}
