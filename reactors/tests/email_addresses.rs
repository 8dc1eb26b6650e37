//! The domain's `EmailAddress` and the SMTP channel's `lettre` agree: every address the API
//! accepts at booking or registration is one the channel can send to.
//!
//! The domain crate has no I/O dependencies, so it cannot ask `lettre`; it implements the same
//! rules (narrowed where that is simpler). This test holds the two together: a list of
//! addresses, and many generated ones, go through both. The channel parses a recipient with
//! `message.to.trim().parse::<lettre::Address>()` and builds the message with
//! `Mailbox::new(None, address)`; [`lettre_sends_to`] does the same.

use consult_domain::EmailAddress;
use lettre::message::Mailbox;
use lettre::Address;

/// Whether the SMTP channel could send a message to `to`.
fn lettre_sends_to(to: &str) -> bool {
    let Ok(address) = to.trim().parse::<Address>() else {
        return false;
    };
    let from: Mailbox = match "Consult <noreply@consult.example>".parse() {
        Ok(from) => from,
        Err(_) => return false,
    };
    let message = lettre::Message::builder()
        .from(from)
        .to(Mailbox::new(None, address.clone()))
        .subject("Your consultation")
        .body(String::from("Hello"));
    message.is_ok_and(|m| m.envelope().to() == [address])
}

fn domain_accepts(to: &str) -> bool {
    EmailAddress::parse(to).is_ok()
}

#[test]
fn addresses_the_mailer_refuses_are_refused_by_the_domain() {
    for address in [
        // The ones a hostile probe found accepted at booking and dead-lettered later.
        "a,b@x.org",
        "a;b@x.org",
        "Bcc:a@x.org",
        // More of the same kind.
        "a b@x.org",
        "a\tb@x.org",
        "a\r\nBcc: c@x.org",
        "a\u{0}@x.org",
        "\"a@x.org",
        "a\"@x.org",
        "(a)b@x.org",
        "a<b@x.org",
        "Pat <pat@x.org>",
        "<pat@x.org>",
        "a\\b@x.org",
        // `lettre` parses these, but cannot build a message to them: the `To` header it writes
        // does not parse back (`MissingTo`).
        "\"a b\"@x.org",
        "\"a,b\"@x.org",
        "\"a\"@x.org",
        "a@[127.0.0.1]",
        "a@[IPv6:::1]",
        "a[b]@x.org",
        "a..b@x.org",
        ".a@x.org",
        "a.@x.org",
        "@x.org",
        "a@",
        "a",
        "",
        "a@-x.org",
        "a@x-.org",
        "a@x..org",
        "a@.x.org",
        "a@x.org.",
        "a@x,y.org",
        "a@x;y.org",
        "a@x y.org",
        "a@x\u{0}.org",
        &format!("{}@x.org", "l".repeat(65)),
        &format!("a@{}.org", "d".repeat(64)),
    ] {
        assert!(!lettre_sends_to(address), "lettre takes {address:?}");
        assert!(!domain_accepts(address), "the domain takes {address:?}");
    }
}

#[test]
fn addresses_the_domain_accepts_are_sent_by_the_mailer() {
    for address in [
        "patient@example.org",
        "a.b+c@example.org",
        "o'brien@mail.example.org",
        "x!#$%&*/=?^_`{|}~-y@example.org",
        "UPPER@EXAMPLE.ORG",
        "jos\u{e9}@b\u{fc}cher.example",
        "\u{7528}\u{6237}@\u{4f8b}\u{5b50}.\u{5e7f}\u{544a}",
        "a@xn--bcher-kva.example",
        "a@1.2.3.4",
        "a@x-y.z-w.org",
        &format!("{}@example.org", "l".repeat(64)),
        &format!("a@{}.org", "d".repeat(63)),
    ] {
        assert!(domain_accepts(address), "the domain refuses {address:?}");
        assert!(lettre_sends_to(address), "lettre refuses {address:?}");
    }
}

/// Where the domain is deliberately narrower than `lettre`: forms no patient or provider needs,
/// refused rather than reproduced.
#[test]
fn the_domain_is_narrower_only_where_it_says_so() {
    for address in ["a@localhost", "a@x_y.org", "a@x!y.org"] {
        assert!(lettre_sends_to(address), "lettre refuses {address:?}");
        assert!(!domain_accepts(address), "the domain takes {address:?}");
    }
}

/// A small deterministic generator (xorshift), so that a failure is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Characters an address is made of, often, and the ones that break it, less often.
const COMMON: &[&str] = &[
    "a", "b", "c", "x", "y", "z", "K", "Q", "0", "1", "7", "9", ".", "-",
];
const SPECIAL: &[&str] = &[
    "!",
    "#",
    "$",
    "%",
    "&",
    "'",
    "*",
    "+",
    "/",
    "=",
    "?",
    "^",
    "_",
    "`",
    "{",
    "|",
    "}",
    "~",
    ",",
    ";",
    ":",
    "\"",
    "(",
    ")",
    "<",
    ">",
    "[",
    "]",
    "\\",
    " ",
    "\t",
    "\r",
    "\n",
    "\u{0}",
    "@",
    "\u{e9}",
    "\u{fc}",
    "\u{20ac}",
    "\u{7528}",
    "\u{200b}",
    "\u{301}",
    "\u{ff0e}",
    "\u{1f600}",
];

fn part(rng: &mut Rng, max: usize) -> String {
    let len = 1 + rng.below(max);
    (0..len)
        .map(|_| {
            if rng.below(12) == 0 {
                rng.pick(SPECIAL)
            } else {
                rng.pick(COMMON)
            }
        })
        .collect()
}

#[test]
fn generated_addresses_the_domain_accepts_are_sent_by_the_mailer() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..200_000 {
        let local = part(&mut rng, 12);
        let labels = 1 + rng.below(3) + usize::from(rng.below(8) != 0);
        let domain: Vec<String> = (0..labels).map(|_| part(&mut rng, 8)).collect();
        let address = format!("{local}@{}", domain.join("."));
        if domain_accepts(&address) {
            accepted += 1;
            assert!(
                lettre_sends_to(&address),
                "the domain takes {address:?}, lettre refuses it"
            );
        } else {
            refused += 1;
        }
    }
    // Both sides of the rule were exercised.
    assert!(
        accepted > 10_000,
        "only {accepted} generated addresses accepted"
    );
    assert!(
        refused > 10_000,
        "only {refused} generated addresses refused"
    );
}
