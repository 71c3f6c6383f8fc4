//! A gateway WebSocket text frame: the JSON a client sends, parsed as the
//! gateway parses it, then the checks the gateway makes of what it names.
//! A refusal's reason must fit a close frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spaceraft::gateway::protocol::{parse_request, ClientRequest, CloseReason};
use spaceraft::space::validate::{check_body, check_idempotency_key, check_name, Limits};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = Limits::default();
    match parse_request(text) {
        Ok(ClientRequest::Hello { user, cursors }) => {
            let _ = check_name("user name", &user, &limits);
            for space in cursors.keys() {
                let _ = check_name("space name", space, &limits);
            }
        }
        Ok(ClientRequest::Post { space, body, key, .. }) => {
            let _ = check_name("space name", &space, &limits);
            let _ = check_body(&body, &limits);
            let _ = check_idempotency_key(&key, &limits);
        }
        Ok(
            ClientRequest::Subscribe { space, .. }
            | ClientRequest::Unsubscribe { space }
            | ClientRequest::History { space, .. },
        ) => {
            let _ = check_name("space name", &space, &limits);
        }
        Ok(ClientRequest::Spaces { .. } | ClientRequest::Ping { .. }) => {}
        Err(why) => assert!(CloseReason::Protocol(why).text().len() <= 123),
    }
});
