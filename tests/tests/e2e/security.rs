//! Issue 17 over real gRPC: TLS and mutual TLS (throwaway certificates made at run time with
//! rcgen), credentials issued and revoked while the server runs, what a kiosk is told, and the
//! bounds on streams and pages.

use ed25519_dalek::SigningKey;
use lobby_kiosk_client::{self as client, proto as pv, Tls};
use lobby_service::config::Role;
use lobby_service::core::credentials;
use lobby_service::core::healthcode::public_key_b64;
use lobby_tests::data_dir;
use lobby_tests::guests::{check_in, code_of, enrol, identities, outcome, set_health};
use lobby_tests::server::{scratch_dir, start_with, OTHER_PROPERTY, PROPERTY};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::Code;

fn issuer_key() -> String {
    public_key_b64(&SigningKey::from_bytes(&[42u8; 32]))
}

/// A throwaway certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// A leaf certificate and key (PEM) for `names` (DNS names / IPs) or a kiosk URI.
    fn leaf(&self, names: &[&str], kiosk_uri: Option<String>, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        if let Some(u) = kiosk_uri {
            p.subject_alt_names.push(SanType::URI(u.try_into().unwrap()));
        }
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Files of a client identity: (cert, key).
fn client_files(dir: &Path, name: &str, (cert, key): (String, String)) -> (PathBuf, PathBuf) {
    (
        write(dir, &format!("{name}.pem"), &cert),
        write(dir, &format!("{name}.key"), &key),
    )
}

/// An empty check-in: a kiosk call that passes authentication and is then refused as bad input.
fn empty_frame() -> pv::CheckInRequest {
    pv::CheckInRequest::default()
}

/// TLS on the listener; a kiosk's client certificate binds its connection to that kiosk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_kiosk_certificates() {
    let dir = scratch_dir("tls");
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca = Ca::new("lobby test CA");
    let (srv_cert, srv_key) = ca.leaf(&["localhost", "127.0.0.1"], None, true);
    let ca_file = write(&pki, "ca.pem", &ca.pem);
    let (cert_file, key_file) = (
        write(&pki, "server.pem", &srv_cert),
        write(&pki, "server.key", &srv_key),
    );
    let Some(s) = start_with(&dir, &issuer_key(), None, |st| {
        st.tls.cert = Some(cert_file.clone());
        st.tls.key = Some(key_file.clone());
        st.tls.client_ca = Some(ca_file.clone());
    })
    .await
    else {
        return;
    };
    let addr = s.addr.trim_start_matches("http://").to_string();
    let tls = |cert: Option<(PathBuf, PathBuf)>| Tls {
        ca: Some(ca_file.clone()),
        cert: cert.as_ref().map(|c| c.0.clone()),
        key: cert.map(|c| c.1),
        domain: Some("localhost".into()),
    };
    // TLS works: a staff call and a kiosk call (without a certificate: optional unless required).
    let ch = client::connect_with(&addr, &tls(None)).await.expect("TLS connects");
    let mut staff = client::staff(ch.clone(), &s.tokens.staff).unwrap();
    let e = staff
        .get_decision(pv::GetDecisionRequest {
            decision_id: "d_unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let mut kiosk = client::kiosk(ch, &s.tokens.kiosk).unwrap();
    assert_eq!(
        kiosk.check_in(empty_frame()).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Plaintext to the TLS port: no answer from the service.
    let plain = client::connect(&s.addr).await;
    if let Ok(ch) = plain {
        let e = client::staff(ch, &s.tokens.staff)
            .unwrap()
            .get_decision(pv::GetDecisionRequest {
                decision_id: "d_unknown".into(),
            })
            .await
            .unwrap_err();
        assert!(
            !matches!(
                e.code(),
                Code::NotFound | Code::PermissionDenied | Code::Unauthenticated
            ),
            "a plaintext call reached the service: {e:?}"
        );
    }

    // Kiosk A's certificate with kiosk A's token: served.
    let a = client_files(
        &pki,
        "kiosk-a",
        ca.leaf(
            &[],
            Some(lobby_service::auth::kiosk_uri(PROPERTY, "kiosk-lobby-1")),
            false,
        ),
    );
    let ch = client::connect_with(&addr, &tls(Some(a.clone()))).await.unwrap();
    let mut as_a = client::kiosk(ch.clone(), &s.tokens.kiosk).unwrap();
    assert_eq!(
        as_a.check_in(empty_frame()).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    // ... with the token of a kiosk of property B: refused before anything is read.
    let mut as_b = client::kiosk(ch.clone(), &s.tokens.other_kiosk).unwrap();
    let e = as_b.check_in(empty_frame()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(PROPERTY), "{}", e.message());
    // ... with a staff token: the connection is a kiosk's.
    let mut staff_over_a = client::staff(ch, &s.tokens.staff).unwrap();
    let e = staff_over_a
        .get_decision(pv::GetDecisionRequest {
            decision_id: "d_unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Property B's certificate with property B's token: served at B (the binding is per kiosk).
    let b = client_files(
        &pki,
        "kiosk-b",
        ca.leaf(
            &[],
            Some(lobby_service::auth::kiosk_uri(OTHER_PROPERTY, "kiosk-other-1")),
            false,
        ),
    );
    let ch = client::connect_with(&addr, &tls(Some(b))).await.unwrap();
    let mut b_kiosk = client::kiosk(ch, &s.tokens.other_kiosk).unwrap();
    assert_eq!(
        b_kiosk.check_in(empty_frame()).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A certificate from an untrusted CA (same kiosk name): the handshake fails, nothing is served.
    let rogue = Ca::new("rogue CA");
    let r = client_files(
        &pki,
        "rogue",
        rogue.leaf(
            &[],
            Some(lobby_service::auth::kiosk_uri(PROPERTY, "kiosk-lobby-1")),
            false,
        ),
    );
    match client::connect_with(&addr, &tls(Some(r))).await {
        Err(_) => {}
        Ok(ch) => {
            let e = client::kiosk(ch, &s.tokens.kiosk)
                .unwrap()
                .check_in(empty_frame())
                .await
                .unwrap_err();
            assert!(
                !matches!(e.code(), Code::InvalidArgument | Code::PermissionDenied),
                "an untrusted certificate reached the service: {e:?}"
            );
        }
    }
    s.stop().await;
}

/// The server refuses plaintext on a non-loopback address unless told so explicitly.
#[test]
fn plaintext_off_loopback_needs_the_explicit_flag() {
    use lobby_service::config::TlsSettings;
    use lobby_service::server::check_transport;
    let lan = "0.0.0.0:50051".parse().unwrap();
    let e = check_transport(lan, &TlsSettings::default(), false).unwrap_err();
    assert!(e.contains("--insecure-plaintext"), "{e}");
    assert!(check_transport(lan, &TlsSettings::default(), true).is_ok());
    assert!(check_transport("127.0.0.1:50051".parse().unwrap(), &TlsSettings::default(), false).is_ok());
    let tls = TlsSettings {
        cert: Some("c.pem".into()),
        key: Some("k.pem".into()),
        ..TlsSettings::default()
    };
    assert!(check_transport(lan, &tls, false).is_ok());
}

/// Credentials issued and revoked in the store (as `lobby-server credentials` does) take effect in
/// a running server without a restart; an override names the staff member who made it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_issued_and_revoked_without_a_restart() {
    let dir = scratch_dir("creds");
    let Some(s) = start_with(&dir, &issuer_key(), None, |st| st.auth.reload_ms = 200).await else {
        return;
    };
    let store = lobby_tests::server::side_store(&dir).await;
    let (token, row) = credentials::add(store.as_ref(), Role::Staff, "bob", None, None, "test-operator")
        .await
        .unwrap();
    let call = |token: String| {
        let ch = s.channel();
        async move {
            client::staff(ch.await, &token)
                .unwrap()
                .get_decision(pv::GetDecisionRequest {
                    decision_id: "d_unknown".into(),
                })
                .await
                .unwrap_err()
        }
    };
    let t0 = Instant::now();
    loop {
        let e = call(token.clone()).await;
        if e.code() == Code::NotFound {
            break;
        }
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the new credential never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("credential usable after {:?}", t0.elapsed());
    // A kiosk credential must name its property.
    assert!(
        credentials::add(store.as_ref(), Role::Kiosk, "kiosk-9", None, None, "op")
            .await
            .is_err()
    );

    credentials::revoke(store.as_ref(), &row.token_id, "test-operator")
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        let e = call(token.clone()).await;
        if e.code() == Code::Unauthenticated {
            assert!(e.message().contains("revoked"), "{}", e.message());
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the revocation never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("credential refused after {:?}", t0.elapsed());
    // An expired credential is refused.
    let (short, _) = credentials::add(
        store.as_ref(),
        Role::Staff,
        "carol",
        None,
        Some(lobby_service::core::now_ms() + 300),
        "op",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let e = call(short).await;
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("expired"), "{}", e.message());
    // The audit trail has both, without the hash or the token.
    let audit: Vec<(String, String)> = lobby_tests::server::audit_entries(&dir, None)
        .await
        .into_iter()
        .filter(|e| e.kind.starts_with("credential_"))
        .map(|e| (e.kind, e.details))
        .collect();
    let kinds: Vec<&str> = audit.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["credential_added", "credential_revoked", "credential_added"]);
    assert!(audit
        .iter()
        .all(|(_, d)| !d.contains(&row.sha256) && !d.contains("lby_")));
    s.stop().await;
}

/// What a kiosk is told: no scores, no other guest; a code that names no reservation is answered
/// like a real guest's code that the face does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kiosk_learns_nothing_about_other_guests() {
    let Some(data) = data_dir() else { return };
    let Some(s) = start_with(&scratch_dir("oracle"), &issuer_key(), None, |_| {}).await else {
        return;
    };
    let ids = identities(&data);
    let mut it = ids.iter().filter(|(_, p)| p.len() >= 2);
    let (victim, vphotos) = it.next().unwrap();
    let (stranger, sphotos) = it.next().unwrap();
    enrol(&s, victim, &vphotos[0]).await;
    set_health(&s, victim, pv::HealthColour::Red, true).await;
    let probe = &sphotos[1];
    // Unary: the victim's real code vs a code that exists nowhere.
    let real = check_in(&s, probe, &code_of(victim), "").await;
    let fake = check_in(&s, probe, "NO-SUCH-CODE", "").await;
    let shown = |r: &pv::CheckInResponse| {
        (
            r.outcome,
            r.reasons.clone(),
            r.guest_message.clone(),
            r.reservation_code.clone(),
        )
    };
    assert_eq!(
        shown(&real),
        shown(&fake),
        "{stranger}: the kiosk can tell a real code from a fake"
    );
    assert_ne!(outcome(&real), pv::Outcome::Approved);
    for r in [&real, &fake] {
        assert!(r.reservation_code.is_empty());
        assert!(
            !r.reasons.iter().any(|x| [
                pv::Reason::HealthRed as i32,
                pv::Reason::LowMatchScore as i32,
                pv::Reason::ReservationNotFound as i32,
                pv::Reason::NotEnrolled as i32
            ]
            .contains(x)),
            "{:?}",
            client::reason_names(&r.reasons)
        );
    }
    // Staff see why (the code named no reservation; the other, the victim's, did not match).
    let rec = s.record(&fake.decision_id).await;
    assert!(rec.reasons.contains(&(pv::Reason::ReservationNotFound as i32)));
    // A stranger searched 1:N: whatever is asked, no record names the nearest guest.
    let r = check_in(&s, probe, "", "").await;
    if !r.decision_id.is_empty() {
        let rec = s.record(&r.decision_id).await;
        assert!(
            rec.reservation_code.is_empty(),
            "nearest guest named: {}",
            rec.reservation_code
        );
    }
    s.stop().await;
}

/// A check-in stream ends at its deadline; a caller holds at most N streams; pending reviews come
/// in pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_pages_are_bounded() {
    let Some(data) = data_dir() else { return };
    let Some(s) = start_with(&scratch_dir("bounds"), &issuer_key(), None, |st| {
        st.limits.check_in_stream_secs = 1;
        st.limits.max_streams_per_caller = 2;
    })
    .await
    else {
        return;
    };
    // A stream that sends nothing ends after 1 s with DEADLINE_EXCEEDED.
    let mut kiosk = s.kiosk().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pv::CheckInRequest>(1);
    let t0 = Instant::now();
    let mut answers = kiosk
        .check_in_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let end = answers.next().await.expect("the stream ends with a status");
    assert_eq!(end.unwrap_err().code(), Code::DeadlineExceeded);
    assert!(t0.elapsed() < Duration::from_secs(5));
    drop(tx);

    // Two streams held open; a third is refused; closing one frees its place.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pv::CheckInRequest>(1);
        let r = kiosk
            .check_in_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        held.push((tx, r));
    }
    let (_tx3, rx3) = tokio::sync::mpsc::channel::<pv::CheckInRequest>(1);
    let e = kiosk
        .check_in_stream(tokio_stream::wrappers::ReceiverStream::new(rx3))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Another kiosk is not affected.
    let mut other = client::kiosk(s.channel().await, &s.tokens.other_kiosk).unwrap();
    let (_txo, rxo) = tokio::sync::mpsc::channel::<pv::CheckInRequest>(1);
    assert!(other
        .check_in_stream(tokio_stream::wrappers::ReceiverStream::new(rxo))
        .await
        .is_ok());
    let (tx, mut r) = held.pop().unwrap();
    drop(tx);
    while r.get_mut().next().await.is_some() {}
    let (_tx4, rx4) = tokio::sync::mpsc::channel::<pv::CheckInRequest>(1);
    assert!(kiosk
        .check_in_stream(tokio_stream::wrappers::ReceiverStream::new(rx4))
        .await
        .is_ok());
    drop(held);

    // Three REVIEWs (strangers giving a real code), listed two at a time.
    let ids = identities(&data);
    let mut it = ids.iter().filter(|(_, p)| p.len() >= 2);
    let (victim, vphotos) = it.next().unwrap();
    enrol(&s, victim, &vphotos[0]).await;
    set_health(&s, victim, pv::HealthColour::Green, true).await;
    let mut reviews = 0;
    for (_, photos) in it {
        if reviews == 3 {
            break;
        }
        let r = check_in(&s, &photos[1], &code_of(victim), "").await;
        reviews += (outcome(&r) == pv::Outcome::Review) as usize;
    }
    assert_eq!(reviews, 3);
    let mut staff = s.staff().await;
    let list = |token: String| pv::ListPendingReviewsRequest {
        property_id: String::new(),
        page_size: 2,
        page_token: token,
    };
    let p1 = staff
        .list_pending_reviews(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p1.decisions.len(), 2);
    assert!(!p1.next_page_token.is_empty());
    let p2 = staff
        .list_pending_reviews(list(p1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.decisions.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let e = staff.list_pending_reviews(list("bogus".into())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut too_big = list(String::new());
    too_big.page_size = 1000;
    assert_eq!(
        staff.list_pending_reviews(too_big).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    s.stop().await;
}

/// HTTP/2 `max_concurrent_streams` (`limits.max_streams_per_connection`): the server tells each
/// connection how many streams it may hold open, so one connection (a proxy carrying many kiosks,
/// or one misbehaving client) cannot hold more; the client queues the next stream until one ends.
/// Without the setting the third stream below opens at once and the test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_its_stream_bound() {
    let Some(s) = start_with(&scratch_dir("conn-streams"), &issuer_key(), None, |st| {
        st.limits.max_streams_per_connection = 2;
        st.limits.max_streams_per_caller = 8;
        st.limits.check_in_stream_secs = 60;
    })
    .await
    else {
        return;
    };
    let open = |mut k: pv::kiosk_service_client::KioskServiceClient<client::Authed>| async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<pv::CheckInRequest>(1);
        let r = k
            .check_in_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner());
        (tx, r)
    };
    let channel = s.channel().await;
    let kiosk = client::kiosk(channel.clone(), &s.tokens.kiosk).unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let (tx, r) = open(kiosk.clone()).await;
        held.push((tx, r.expect("a stream within the bound opens")));
    }
    // A third stream on the same connection waits for a free place ...
    let third = tokio::spawn(open(kiosk.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !third.is_finished(),
        "a third stream opened on a connection bound to two"
    );
    // ... while another connection is served at once ...
    let other = client::kiosk(s.channel().await, &s.tokens.kiosk).unwrap();
    let (_txo, ro) = tokio::time::timeout(Duration::from_secs(5), open(other))
        .await
        .expect("another connection is not held up");
    assert!(ro.is_ok());
    // ... and it opens once one of the two ends.
    let (tx, mut r) = held.pop().unwrap();
    drop(tx);
    while r.next().await.is_some() {}
    let (_tx3, r3) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the queued stream opens when a place is free")
        .unwrap();
    assert!(r3.is_ok());
    drop(held);
    s.stop().await;
}
