use proptest::prelude::*;

use super::*;

fn chat() -> Protocol {
    Protocol::new(
        "chat/1",
        ["client", "server"],
        Global::send(
            "client",
            "server",
            "join",
            Global::repeat(
                "session",
                Global::choice(
                    "client",
                    [
                        Global::send("client", "server", "post", Global::again("session")),
                        Global::send("client", "server", "leave", Global::End),
                    ],
                ),
            ),
        ),
    )
    .unwrap()
}

/// Key-value RPC: the client asks get or put, the server answers each, until quit.
fn kv() -> Protocol {
    Protocol::new(
        "kv/1",
        ["client", "server"],
        Global::repeat(
            "rpc",
            Global::choice(
                "client",
                [
                    Global::send(
                        "client",
                        "server",
                        "get",
                        Global::choice(
                            "server",
                            [
                                Global::send("server", "client", "value", Global::again("rpc")),
                                Global::send("server", "client", "missing", Global::again("rpc")),
                            ],
                        ),
                    ),
                    Global::send(
                        "client",
                        "server",
                        "put",
                        Global::send("server", "client", "ok", Global::again("rpc")),
                    ),
                    Global::send("client", "server", "quit", Global::End),
                ],
            ),
        ),
    )
    .unwrap()
}

/// Three parties: the buyer accepts or rejects; only on accept does the seller tell the
/// shipper to ship, which the shipper confirms to the buyer.
fn trade() -> Protocol {
    Protocol::new(
        "trade/1",
        ["buyer", "seller", "shipper"],
        Global::send(
            "seller",
            "buyer",
            "quote",
            Global::choice(
                "buyer",
                [
                    Global::send(
                        "buyer",
                        "seller",
                        "accept",
                        Global::send(
                            "seller",
                            "shipper",
                            "ship",
                            Global::send("shipper", "buyer", "shipped", Global::End),
                        ),
                    ),
                    Global::send("buyer", "seller", "reject", Global::End),
                ],
            ),
        ),
    )
    .unwrap()
}

#[test]
fn a_whole_chat_session() {
    let p = chat();
    let mut client = p.monitor("client").unwrap();
    let mut server = p.monitor("server").unwrap();
    for label in ["join", "post", "post", "leave"] {
        client.send("server", label).unwrap();
        server.receive("client", label).unwrap();
    }
    assert!(client.is_done() && server.is_done());
}

#[test]
fn out_of_order_is_refused_and_changes_nothing() {
    let p = chat();
    let mut server = p.monitor("server").unwrap();
    let err = server.receive("client", "post").unwrap_err();
    assert_eq!(
        err,
        Violation::Unexpected {
            protocol: "chat/1".into(),
            role: "server".into(),
            direction: machine::DirectionText(Direction::Receive),
            got: "client:post".into(),
            expected: vec!["client:join".into()],
        }
    );
    assert_eq!(server.state(), 0);
    server.receive("client", "join").unwrap();
    // A server never receives its own kind of message from itself, nor sends "post".
    assert!(matches!(
        server.send("client", "post"),
        Err(Violation::Unexpected { .. })
    ));
}

#[test]
fn after_the_end_nothing_is_accepted() {
    let p = chat();
    let mut server = p.monitor("server").unwrap();
    server.receive("client", "join").unwrap();
    server.receive("client", "leave").unwrap();
    assert!(server.is_done());
    assert!(matches!(
        server.receive("client", "post"),
        Err(Violation::AfterEnd { .. })
    ));
}

#[test]
fn the_wrong_role_is_refused() {
    let p = trade();
    let mut buyer = p.monitor("buyer").unwrap();
    // The quote must come from the seller, not the shipper.
    assert!(matches!(
        buyer.receive("shipper", "quote"),
        Err(Violation::WrongRole { expected, .. }) if expected == ["seller"]
    ));
    buyer.receive("seller", "quote").unwrap();
    buyer.send("seller", "accept").unwrap();
    buyer.receive("shipper", "shipped").unwrap();
    assert!(buyer.is_done());
}

#[test]
fn a_role_that_does_not_see_a_choice_gets_the_merge() {
    let p = trade();
    // The shipper either ships or is never involved: it may end at once.
    let mut shipper = p.monitor("shipper").unwrap();
    assert!(shipper.is_done());
    shipper.receive("seller", "ship").unwrap();
    assert!(!shipper.is_done());
    shipper.send("buyer", "shipped").unwrap();
    assert!(shipper.is_done());
}

#[test]
fn rpc_loops_with_nested_choices() {
    let p = kv();
    let mut client = p.monitor("client").unwrap();
    let mut server = p.monitor("server").unwrap();
    let trace = [
        ("client", "get"),
        ("server", "missing"),
        ("client", "put"),
        ("server", "ok"),
        ("client", "get"),
        ("server", "value"),
        ("client", "quit"),
    ];
    for (from, label) in trace {
        let (sender, receiver, to) = if from == "client" {
            (&mut client, &mut server, "server")
        } else {
            (&mut server, &mut client, "client")
        };
        sender.send(to, label).unwrap();
        receiver.receive(from, label).unwrap();
    }
    assert!(client.is_done() && server.is_done());
    // A second request before the answer is out of protocol.
    let mut server = p.monitor("server").unwrap();
    server.receive("client", "get").unwrap();
    assert!(server.receive("client", "get").is_err());
}

#[test]
fn ill_formed_protocols_are_refused() {
    let roles = ["a", "b"];
    let cases: Vec<(Global, DefinitionError)> = vec![
        (
            Global::send("a", "c", "x", Global::End),
            DefinitionError::UnknownRole("c".into()),
        ),
        (
            Global::send("a", "a", "x", Global::End),
            DefinitionError::SelfSend("a".into()),
        ),
        (
            Global::choice("a", []),
            DefinitionError::EmptyChoice("a".into()),
        ),
        (
            Global::choice("a", [Global::send("b", "a", "x", Global::End)]),
            DefinitionError::BranchNotByChooser { by: "a".into() },
        ),
        (
            Global::choice(
                "a",
                [
                    Global::send("a", "b", "x", Global::End),
                    Global::send("a", "b", "x", Global::send("a", "b", "y", Global::End)),
                ],
            ),
            DefinitionError::AmbiguousChoice {
                by: "a".into(),
                label: "x".into(),
            },
        ),
        (
            Global::send("a", "b", "x", Global::again("nowhere")),
            DefinitionError::UnboundLoop("nowhere".into()),
        ),
        (
            Global::repeat("l", Global::again("l")),
            DefinitionError::EmptyLoop("l".into()),
        ),
    ];
    for (global, err) in cases {
        assert_eq!(Protocol::new("p", roles, global).unwrap_err(), err);
    }
    assert_eq!(
        Protocol::new("p", ["a", "a"], Global::End).unwrap_err(),
        DefinitionError::DuplicateRole("a".into())
    );
    // Names the wire could not carry (a violation naming them could outgrow a refusal).
    let long = "n".repeat(crate::actor::MAX_NAME_BYTES + 1);
    let fits = "n".repeat(crate::actor::MAX_NAME_BYTES);
    for (name, role, label) in [
        (long.as_str(), "b", "x"),
        ("p", long.as_str(), "x"),
        ("p", "b", long.as_str()),
    ] {
        assert_eq!(
            Protocol::new(
                name,
                ["a", role],
                Global::send("a", role, label, Global::End)
            )
            .unwrap_err(),
            DefinitionError::NameTooLong(long.clone())
        );
    }
    assert!(
        Protocol::new(
            &fits,
            ["a", &fits],
            Global::send("a", &fits, &fits, Global::End)
        )
        .is_ok()
    );
    assert!(chat().monitor("observer").is_err());
}

/// A random run of the global protocol: a walk over its automaton.
fn random_trace(p: &Protocol, choices: &[u8]) -> Vec<(String, String, String)> {
    let roles: Vec<String> = p.roles().map(String::from).collect();
    let a = machine_for_walk(p, &roles);
    let mut state = a.start;
    let mut trace = Vec::new();
    for &c in choices {
        let mut options = Vec::new();
        for s in a.closure_of(state) {
            for (from, to, label, t) in a.edges_of(s) {
                options.push((from, to, label, t));
            }
        }
        if options.is_empty() {
            break;
        }
        let (from, to, label, t) = options[c as usize % options.len()].clone();
        trace.push((from, to, label));
        state = t;
    }
    trace
}

struct Walk {
    automaton: machine::WalkView,
    start: usize,
}

impl Walk {
    fn closure_of(&self, s: usize) -> Vec<usize> {
        self.automaton.closure(s)
    }
    fn edges_of(&self, s: usize) -> Vec<(String, String, String, usize)> {
        self.automaton.edges(s)
    }
}

fn machine_for_walk(p: &Protocol, roles: &[String]) -> Walk {
    let view = machine::WalkView::new(p.global(), roles);
    let start = view.start();
    Walk {
        automaton: view,
        start,
    }
}

proptest! {
    #[test]
    fn every_run_of_the_global_protocol_is_accepted_by_every_role(
        which in 0usize..3,
        choices in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let p = [chat(), kv(), trade()][which].clone();
        let mut monitors: BTreeMap<String, Monitor> =
            p.roles().map(|r| (r.to_string(), p.monitor(r).unwrap())).collect();
        for (from, to, label) in random_trace(&p, &choices) {
            monitors.get_mut(&from).unwrap().send(&to, &label).unwrap();
            monitors.get_mut(&to).unwrap().receive(&from, &label).unwrap();
        }
    }
}
