//! What each notification says: the text of SMS, WhatsApp and email messages, rendered from
//! templates with [`minijinja`].
//!
//! [`render`] takes a [`NotificationKind`], the [`Recipient`], the [`ChannelKind`] and the plain
//! [`Facts`] of the consultation, and returns a [`Rendered`] message (subject, plain text and
//! HTML for email; text only for SMS and WhatsApp). This module does not know the domain types:
//! callers map events to facts.
//!
//! # Privacy
//!
//! Messages carry no medical information. [`Facts`] has no field for the reason of a booking, a
//! decline or a cancellation, and must not get one: what is not in the facts cannot leak into
//! an SMS, a lock screen or an email subject. Short messages say who (the provider's display
//! name), when, and give a link into the app, where the rest can be read after signing in.
//!
//! # Templates
//!
//! The templates live under `reactors/templates/` and are embedded into the binary with
//! [`include_str!`], so nothing is read from disk at run time:
//!
//! - `sms/<kind>.txt.j2`: the text of SMS and WhatsApp messages (kept plain ASCII and under
//!   [`SHORT_TEXT_LIMIT`] characters, that is two SMS segments);
//! - `email/<kind>.subject.txt.j2`, `email/<kind>.txt.j2`, `email/<kind>.html.j2`: the subject,
//!   the plain-text part and the HTML part of emails; the two bodies are then wrapped by
//!   `email/layout.txt.j2` and `email/layout.html.j2` (greeting-free footer, manage link,
//!   reference);
//! - `common/refund.txt.j2`: the sentence about what happens to the payment, rendered first and
//!   handed to the other templates as `refund_text`.
//!
//! `<kind>` is [`NotificationKind::as_str`]. All templates share one [`minijinja::Environment`],
//! built once, with [`UndefinedBehavior::Strict`] (a misspelt or missing variable is an error,
//! never an empty string) and HTML auto-escaping for `.html` templates.
//!
//! Formatting is done in Rust and handed to the templates as strings: times in the recipient's
//! time zone (`Tue 24 Nov 2026, 10:30 CET`), amounts from minor units (`45.00 EUR`) and the time
//! left before a reminder's consultation (`in 1 hour`). The wording is in the templates.
//!
//! # Template variables
//!
//! | variable          | value                                                                |
//! |-------------------|----------------------------------------------------------------------|
//! | `recipient`       | `"patient"` or `"provider"`                                          |
//! | `channel`         | `"sms"`, `"whatsapp"` or `"email"`                                   |
//! | `consultation_id` | as given                                                             |
//! | `provider_name`   | as given                                                             |
//! | `mode`            | the mode as a word: `video`, `voice`, `in-person`, …                 |
//! | `when`            | start, long form: `Tue 24 Nov 2026, 10:30 CET`                       |
//! | `when_short`      | start, for subjects: `Tue 24 Nov at 10:30 CET`                       |
//! | `ends_time`       | end, time of day only: `11:00`                                       |
//! | `timezone`        | the IANA name of the recipient's zone: `Europe/Paris`                |
//! | `previous_when`   | previous start, long form, or none                                   |
//! | `meeting_link`    | or none                                                              |
//! | `manage_link`     | or none                                                              |
//! | `payment`         | `{amount: "45.00 EUR", refund: "full"}` or none (amount may be none) |
//! | `refund_text`     | the payment sentence for the patient, or none                        |
//! | `cancelled_by`    | `"patient"`, `"provider"` or `"clinic"`, or none                     |
//! | `expiry`          | `"not_accepted"` or `"unpaid"`, or none                              |
//! | `reminder`        | `{until: "in 1 hour", is_final: false}` or none                      |

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::{OffsetName, Tz};
use minijinja::{context, AutoEscape, Environment, Output, State, UndefinedBehavior, Value};
use serde::{Deserialize, Serialize};

use crate::channels::ChannelKind;

/// The most characters an SMS or WhatsApp text may have: two concatenated SMS segments of the
/// GSM 7-bit alphabet (the templates are plain ASCII, so inputs in ASCII keep it at that).
pub const SHORT_TEXT_LIMIT: usize = 320;

/// Who a notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipient {
    Patient,
    Provider,
}

impl Recipient {
    /// Every recipient.
    pub const ALL: [Self; 2] = [Self::Patient, Self::Provider];

    /// The name used in storage and in templates: `patient`, `provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Patient => "patient",
            Self::Provider => "provider",
        }
    }

    /// The inverse of [`Recipient::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "patient" => Some(Self::Patient),
            "provider" => Some(Self::Provider),
            _ => None,
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a notification is about. Each kind has its own templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// To the provider when a consultation is booked: a new request awaits acceptance.
    NewRequest,
    /// To the patient: the provider accepted.
    Accepted,
    /// To the patient: the provider declined; says what happens to the payment
    /// ([`Facts::payment`] is required).
    Declined,
    /// To the patient: the payment was received ([`Facts::payment`] is required).
    PaymentReceipt,
    /// To either party: the new time and the previous one ([`Facts::previous_starts_at`] is
    /// required).
    Rescheduled,
    /// To either party: who cancelled, never why ([`Facts::cancelled_by`] is required).
    Cancelled,
    /// To the patient: the request was not accepted in time, or it was unpaid at the start
    /// ([`Facts::expiry`] is required).
    Expired,
    /// To either party, before the start ([`Facts::reminder`] is required and says which one).
    Reminder,
}

impl NotificationKind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::NewRequest,
        Self::Accepted,
        Self::Declined,
        Self::PaymentReceipt,
        Self::Rescheduled,
        Self::Cancelled,
        Self::Expired,
        Self::Reminder,
    ];

    /// The name used in storage and in template file names: `new_request`, `accepted`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewRequest => "new_request",
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::PaymentReceipt => "payment_receipt",
            Self::Rescheduled => "rescheduled",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Reminder => "reminder",
        }
    }

    /// The inverse of [`NotificationKind::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Whether this kind of notification is ever sent to `to`: a new request goes to the
    /// provider only, acceptance, decline, receipt and expiry to the patient only;
    /// rescheduling, cancellation and reminders to both. [`render`] refuses the others.
    pub fn is_for(self, to: Recipient) -> bool {
        match self {
            Self::NewRequest => to == Recipient::Provider,
            Self::Accepted | Self::Declined | Self::PaymentReceipt | Self::Expired => {
                to == Recipient::Patient
            }
            Self::Rescheduled | Self::Cancelled | Self::Reminder => true,
        }
    }
}

impl fmt::Display for NotificationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plain data a notification is rendered from.
///
/// There is deliberately no field for medical information (the reason for a booking, a decline
/// or a cancellation, notes): see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    pub consultation_id: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    /// The start before a reschedule; required for [`NotificationKind::Rescheduled`].
    pub previous_starts_at: Option<DateTime<Utc>>,
    /// The recipient's time zone: every time is shown in it. Serialized as its IANA name.
    #[serde(with = "tz_name")]
    pub timezone: Tz,
    /// How the parties meet (`video`, `voice`, `in_person`, `messaging`, …), shown as a word.
    pub mode: String,
    /// The provider's display name (not medical).
    pub provider_name: String,
    /// The app link to join the call (video or voice), when there is one.
    pub meeting_link: Option<String>,
    /// The app link to view or manage the consultation.
    pub manage_link: Option<String>,
    /// The payment; required for [`NotificationKind::PaymentReceipt`] (which shows the amount)
    /// and [`NotificationKind::Declined`] (which says what happens to it). The other kinds use
    /// only its refund note, so for them the amount and currency may be left empty.
    pub payment: Option<PaymentFacts>,
    /// Who cancelled: `patient`, `provider`, or `system` (also `admin` or `clinic`), shown as
    /// "the clinic". Required for [`NotificationKind::Cancelled`].
    pub cancelled_by: Option<String>,
    /// Why it expired: `not_accepted` or `unpaid` (also the domain's `not_accepted_in_time` and
    /// `unpaid_at_start`). Required for [`NotificationKind::Expired`].
    pub expiry: Option<String>,
    /// Which reminder; required for [`NotificationKind::Reminder`].
    pub reminder: Option<ReminderFacts>,
}

/// A payment and what happens to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFacts {
    /// The amount in the currency's minor units (cents for EUR, yen for JPY).
    pub amount_minor: i64,
    /// The ISO 4217 code (`EUR`, `JPY`).
    pub currency: String,
    pub refund: RefundNote,
}

/// What happens to the payment, said to the patient on a decline, cancellation or expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundNote {
    /// Nothing to say about a refund (a receipt, say): no sentence.
    #[default]
    None,
    /// "You will be refunded in full."
    Full,
    /// "You have not been charged."
    NotPaid,
    /// Cancelled too late for a refund: "Cancellations this close to the start are not
    /// refunded."
    Late,
}

impl RefundNote {
    /// The name used in templates: `none`, `full`, `not_paid`, `late`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Full => "full",
            Self::NotPaid => "not_paid",
            Self::Late => "late",
        }
    }
}

/// Which reminder this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReminderFacts {
    /// How long before the start it is scheduled (24 h, 1 h, 15 min): shown as "in 24 hours".
    pub offset: Duration,
    /// The last reminder before the start.
    pub is_final: bool,
}

/// A rendered notification. SMS and WhatsApp use `text` only; email has all three parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    /// The text message, or the plain-text part of an email.
    pub text: String,
    /// The HTML part of an email.
    pub html: Option<String>,
}

/// Why a notification could not be rendered. None of these carry personal data beyond the
/// offending fact's value for the enumerated facts (`cancelled_by`, `expiry`, a currency code).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// This kind of notification is never sent to this recipient (a new request to the
    /// patient, say).
    #[error("a {kind} notification is not sent to the {to}")]
    NotApplicable {
        kind: NotificationKind,
        to: Recipient,
    },
    /// The facts lack what this kind of notification needs.
    #[error("a {kind} notification needs `{fact}`")]
    MissingFact {
        kind: NotificationKind,
        fact: &'static str,
    },
    /// A fact has a value this module does not know.
    #[error("unknown value `{value}` for `{fact}`")]
    InvalidFact { fact: &'static str, value: String },
    /// The templates could not be loaded (a bug caught by the tests).
    #[error("the message templates could not be loaded: {0}")]
    Templates(String),
    /// A template failed to render (a bug: a missing variable, say).
    #[error("template `{template}` failed to render")]
    Template {
        template: String,
        #[source]
        source: minijinja::Error,
    },
}

/// Renders one notification for one recipient over one channel.
///
/// Fails, without panicking, on a combination that is never sent (see
/// [`NotificationKind::is_for`]), on missing or unknown facts, and on a template error.
pub fn render(
    kind: NotificationKind,
    to: Recipient,
    channel: ChannelKind,
    facts: &Facts,
) -> Result<Rendered, RenderError> {
    if !kind.is_for(to) {
        return Err(RenderError::NotApplicable { kind, to });
    }
    let env = environment()?;
    let context = template_context(env, kind, to, channel, facts)?;
    match channel {
        ChannelKind::Sms | ChannelKind::Whatsapp => {
            let text = render_template(env, &format!("sms/{kind}.txt.j2"), &context)?;
            Ok(Rendered {
                subject: None,
                text: tidy_short_text(&text),
                html: None,
            })
        }
        ChannelKind::Email => {
            let subject = render_template(env, &format!("email/{kind}.subject.txt.j2"), &context)?;
            let subject = tidy_subject(&subject);
            let text = render_template(env, &format!("email/{kind}.txt.j2"), &context)?;
            let html = render_template(env, &format!("email/{kind}.html.j2"), &context)?;
            let layout = |body: Value| {
                context! {
                    subject => &subject,
                    body => body,
                    manage_link => &facts.manage_link,
                    consultation_id => &facts.consultation_id,
                }
            };
            let text = render_template(
                env,
                "email/layout.txt.j2",
                &layout(Value::from(tidy_email_text(&text))),
            )?;
            let html = render_template(
                env,
                "email/layout.html.j2",
                &layout(Value::from_safe_string(html.trim().to_owned())),
            )?;
            Ok(Rendered {
                subject: Some(subject),
                text: tidy_email_text(&text),
                html: Some(format!("{}\n", html.trim())),
            })
        }
    }
}

/// `(name, source)` pairs for template files under `reactors/templates/`.
macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../templates/", $name)))),*]
    };
}

/// Every template, embedded at build time.
const TEMPLATES: &[(&str, &str)] = templates![
    "common/refund.txt.j2",
    "sms/new_request.txt.j2",
    "sms/accepted.txt.j2",
    "sms/declined.txt.j2",
    "sms/payment_receipt.txt.j2",
    "sms/rescheduled.txt.j2",
    "sms/cancelled.txt.j2",
    "sms/expired.txt.j2",
    "sms/reminder.txt.j2",
    "email/layout.txt.j2",
    "email/layout.html.j2",
    "email/new_request.subject.txt.j2",
    "email/new_request.txt.j2",
    "email/new_request.html.j2",
    "email/accepted.subject.txt.j2",
    "email/accepted.txt.j2",
    "email/accepted.html.j2",
    "email/declined.subject.txt.j2",
    "email/declined.txt.j2",
    "email/declined.html.j2",
    "email/payment_receipt.subject.txt.j2",
    "email/payment_receipt.txt.j2",
    "email/payment_receipt.html.j2",
    "email/rescheduled.subject.txt.j2",
    "email/rescheduled.txt.j2",
    "email/rescheduled.html.j2",
    "email/cancelled.subject.txt.j2",
    "email/cancelled.txt.j2",
    "email/cancelled.html.j2",
    "email/expired.subject.txt.j2",
    "email/expired.txt.j2",
    "email/expired.html.j2",
    "email/reminder.subject.txt.j2",
    "email/reminder.txt.j2",
    "email/reminder.html.j2",
];

/// The shared environment, built on first use.
fn environment() -> Result<&'static Environment<'static>, RenderError> {
    static ENVIRONMENT: OnceLock<Result<Environment<'static>, String>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(build_environment)
        .as_ref()
        .map_err(|error| RenderError::Templates(error.clone()))
}

fn build_environment() -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // The default callback already escapes `.html.j2` for HTML and leaves the others alone;
    // spelled out so that a change of default cannot turn escaping off.
    env.set_auto_escape_callback(minijinja::default_auto_escape_callback);
    env.set_formatter(formatter);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .map_err(|error| format!("{name}: {error}"))?;
    }
    Ok(env)
}

/// minijinja's formatter, except that HTML escaping leaves `/` alone: it needs no escaping in
/// text or in quoted attributes, and links stay readable (`https://…`, not `https:&#x2f;…`).
/// Everything else (numbers, safe strings, `none`, non-HTML templates) goes the default way;
/// the strict check for undefined values happens before any formatter is called.
fn formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), minijinja::Error> {
    match value.as_str() {
        Some(text) if state.auto_escape() == AutoEscape::Html && !value.is_safe() => {
            out.write_str(&escape_html(text))?;
            Ok(())
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Escapes `&`, `<`, `>`, `"` and `'` for HTML text and quoted attribute values.
fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#x27;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn render_template(
    env: &Environment<'_>,
    name: &str,
    context: &Value,
) -> Result<String, RenderError> {
    env.get_template(name)
        .and_then(|template| template.render(context))
        .map_err(|source| RenderError::Template {
            template: name.to_owned(),
            source,
        })
}

/// What the templates see (see the table in the module documentation).
#[derive(Debug, Serialize)]
struct TemplateContext<'a> {
    recipient: &'static str,
    channel: &'static str,
    consultation_id: &'a str,
    provider_name: &'a str,
    mode: String,
    when: String,
    when_short: String,
    ends_time: String,
    timezone: &'static str,
    previous_when: Option<String>,
    meeting_link: Option<&'a str>,
    manage_link: Option<&'a str>,
    payment: Option<PaymentContext>,
    cancelled_by: Option<&'static str>,
    expiry: Option<&'static str>,
    reminder: Option<ReminderContext>,
}

#[derive(Debug, Serialize)]
struct PaymentContext {
    /// `None` when the amount is not known (a decline carries only the refund note).
    amount: Option<String>,
    refund: &'static str,
}

#[derive(Debug, Serialize)]
struct ReminderContext {
    until: String,
    is_final: bool,
}

/// Checks the facts `kind` needs and formats them for the templates; adds `refund_text`.
fn template_context(
    env: &Environment<'_>,
    kind: NotificationKind,
    to: Recipient,
    channel: ChannelKind,
    facts: &Facts,
) -> Result<Value, RenderError> {
    let missing = |fact| RenderError::MissingFact { kind, fact };
    match kind {
        NotificationKind::Declined | NotificationKind::PaymentReceipt
            if facts.payment.is_none() =>
        {
            return Err(missing("payment"));
        }
        NotificationKind::Rescheduled if facts.previous_starts_at.is_none() => {
            return Err(missing("previous_starts_at"));
        }
        NotificationKind::Cancelled if facts.cancelled_by.is_none() => {
            return Err(missing("cancelled_by"));
        }
        NotificationKind::Expired if facts.expiry.is_none() => return Err(missing("expiry")),
        NotificationKind::Reminder if facts.reminder.is_none() => return Err(missing("reminder")),
        _ => {}
    }
    let tz = facts.timezone;
    let payment = facts
        .payment
        .as_ref()
        .map(|payment| -> Result<PaymentContext, RenderError> {
            let amount = format_money(payment.amount_minor, &payment.currency);
            Ok(PaymentContext {
                // Only the receipt shows the amount and needs a valid one; the other kinds use
                // the refund note alone, and may come with no currency at all.
                amount: if kind == NotificationKind::PaymentReceipt {
                    Some(amount?)
                } else {
                    amount.ok()
                },
                refund: payment.refund.as_str(),
            })
        })
        .transpose()?;
    let context = TemplateContext {
        recipient: to.as_str(),
        channel: channel.as_str(),
        consultation_id: &facts.consultation_id,
        provider_name: &facts.provider_name,
        mode: mode_word(&facts.mode),
        when: format_when(facts.starts_at, tz),
        when_short: format_when_short(facts.starts_at, tz),
        ends_time: facts.ends_at.with_timezone(&tz).format("%H:%M").to_string(),
        timezone: tz.name(),
        previous_when: facts.previous_starts_at.map(|at| format_when(at, tz)),
        meeting_link: facts.meeting_link.as_deref(),
        manage_link: facts.manage_link.as_deref(),
        payment,
        cancelled_by: facts.cancelled_by.as_deref().map(canceller).transpose()?,
        expiry: facts.expiry.as_deref().map(expiry_cause).transpose()?,
        reminder: facts.reminder.map(|reminder| ReminderContext {
            until: until_words(reminder.offset),
            is_final: reminder.is_final,
        }),
    };
    let context = Value::from_serialize(&context);
    let refund_text = render_template(env, "common/refund.txt.j2", &context)?;
    let refund_text = refund_text.split_whitespace().collect::<Vec<_>>().join(" ");
    let refund_text = (!refund_text.is_empty()).then_some(refund_text);
    Ok(context! { refund_text => refund_text, ..context })
}

/// `Tue 24 Nov 2026, 10:30 CET`, in `tz`.
pub fn format_when(at: DateTime<Utc>, tz: Tz) -> String {
    let local = at.with_timezone(&tz);
    format!(
        "{} {}",
        local.format("%a %-d %b %Y, %H:%M"),
        zone_label(&local)
    )
}

/// `Tue 24 Nov at 10:30 CET`, in `tz`: the short form for email subjects.
pub fn format_when_short(at: DateTime<Utc>, tz: Tz) -> String {
    let local = at.with_timezone(&tz);
    format!(
        "{} {}",
        local.format("%a %-d %b at %H:%M"),
        zone_label(&local)
    )
}

/// The zone's abbreviation at that time (`CET`, `CEST`, `GMT`, `BST`, `EST`), or its IANA
/// name where the zone has only a numeric one (`+03` for `Europe/Istanbul`).
fn zone_label(local: &DateTime<Tz>) -> String {
    match local.offset().abbreviation() {
        Some(abbreviation) if abbreviation.starts_with(|c: char| c.is_ascii_alphabetic()) => {
            abbreviation.to_owned()
        }
        _ => local.timezone().name().to_owned(),
    }
}

/// An amount from minor units with its currency code: `(4500, "EUR")` → `45.00 EUR`,
/// `(4500, "JPY")` → `4500 JPY`, `(12345, "KWD")` → `12.345 KWD`. The code is upper-cased; anything but
/// three ASCII letters is an [`RenderError::InvalidFact`].
///
/// The number of decimals follows ISO 4217 for the currencies with zero or three (listed
/// here); every other code gets two. No thousands separators and no symbols: the code after
/// the number reads the same in every locale.
pub fn format_money(amount_minor: i64, currency: &str) -> Result<String, RenderError> {
    let code = currency.trim().to_ascii_uppercase();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(RenderError::InvalidFact {
            fact: "payment.currency",
            value: currency.to_owned(),
        });
    }
    let decimals: u32 = match code.as_str() {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "UYI" | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let sign = if amount_minor < 0 { "-" } else { "" };
    let units = amount_minor.unsigned_abs();
    let text = if decimals == 0 {
        format!("{sign}{units} {code}")
    } else {
        let factor = 10_u64.pow(decimals);
        let width = decimals as usize;
        format!("{sign}{}.{:0width$} {code}", units / factor, units % factor)
    };
    Ok(text)
}

/// How long until the start, for reminders: `in 24 hours`, `in 1 hour`, `in 15 minutes`,
/// `in 1 hour and 30 minutes`; `now` for zero. Seconds are dropped.
pub fn until_words(offset: Duration) -> String {
    fn count(n: u64, unit: &str) -> String {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    }
    let minutes = offset.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (0, 0) if offset.is_zero() => "now".to_owned(),
        (0, 0) => "in less than a minute".to_owned(),
        (0, m) => format!("in {}", count(m, "minute")),
        (h, 0) => format!("in {}", count(h, "hour")),
        (h, m) => format!("in {} and {}", count(h, "hour"), count(m, "minute")),
    }
}

/// The mode as a word: `in_person` → `in-person`, other underscores become spaces.
fn mode_word(mode: &str) -> String {
    match mode.trim() {
        "in_person" => "in-person".to_owned(),
        other => other.replace('_', " "),
    }
}

fn canceller(value: &str) -> Result<&'static str, RenderError> {
    match value {
        "patient" => Ok("patient"),
        "provider" => Ok("provider"),
        "system" | "admin" | "clinic" => Ok("clinic"),
        other => Err(RenderError::InvalidFact {
            fact: "cancelled_by",
            value: other.to_owned(),
        }),
    }
}

fn expiry_cause(value: &str) -> Result<&'static str, RenderError> {
    match value {
        "not_accepted" | "not_accepted_in_time" => Ok("not_accepted"),
        "unpaid" | "unpaid_at_start" => Ok("unpaid"),
        other => Err(RenderError::InvalidFact {
            fact: "expiry",
            value: other.to_owned(),
        }),
    }
}

/// SMS and WhatsApp: one sentence per line, no blank lines, no stray spaces.
fn tidy_short_text(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Email subjects: one line, single spaces (a subject can never break the header).
fn tidy_subject(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Plain-text email: no trailing spaces, at most one blank line in a row, ends with a newline.
fn tidy_email_text(text: &str) -> String {
    let mut out = String::new();
    let mut blank = false;
    for line in text.lines().map(str::trim_end) {
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if blank {
            out.push('\n');
            blank = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `Tz` as its IANA name (chrono-tz's own serde support is not enabled).
mod tz_name {
    use chrono_tz::Tz;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(tz: &Tz, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Tz, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse()
            .map_err(|_| D::Error::custom(format!("unknown time zone `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::TimeZone;

    const MANAGE: &str =
        "https://app.example.org/consultations/0b8f0e9c-4a8e-4b64-9d7f-1f9a6c0b5a11";
    const JOIN: &str =
        "https://app.example.org/consultations/0b8f0e9c-4a8e-4b64-9d7f-1f9a6c0b5a11/join";

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("a valid UTC time")
    }

    /// Facts with everything any kind needs, for a consultation on Tue 24 Nov 2026 at 09:30 UTC
    /// (10:30 in Paris), moved there from Mon 23 Nov at 15:00 UTC.
    fn facts() -> Facts {
        Facts {
            consultation_id: "0b8f0e9c-4a8e-4b64-9d7f-1f9a6c0b5a11".to_owned(),
            starts_at: at(2026, 11, 24, 9, 30),
            ends_at: at(2026, 11, 24, 10, 0),
            previous_starts_at: Some(at(2026, 11, 23, 15, 0)),
            timezone: chrono_tz::Europe::Paris,
            mode: "video".to_owned(),
            provider_name: "Dr Alexandra Montgomery-Whitfield".to_owned(),
            meeting_link: Some(JOIN.to_owned()),
            manage_link: Some(MANAGE.to_owned()),
            payment: Some(PaymentFacts {
                amount_minor: 4500,
                currency: "EUR".to_owned(),
                refund: RefundNote::Full,
            }),
            cancelled_by: Some("provider".to_owned()),
            expiry: Some("not_accepted".to_owned()),
            reminder: Some(ReminderFacts {
                offset: Duration::from_secs(24 * 3600),
                is_final: false,
            }),
        }
    }

    fn ok(kind: NotificationKind, to: Recipient, channel: ChannelKind, facts: &Facts) -> Rendered {
        match render(kind, to, channel, facts) {
            Ok(rendered) => rendered,
            Err(error) => panic!("{kind} to {to} over {channel}: {error:?}"),
        }
    }

    fn email(kind: NotificationKind, to: Recipient, facts: &Facts) -> (String, String, String) {
        let rendered = ok(kind, to, ChannelKind::Email, facts);
        (
            rendered.subject.expect("an email has a subject"),
            rendered.text,
            rendered.html.expect("an email has an HTML part"),
        )
    }

    /// Every combination that is sent: (kind, recipient).
    fn sent() -> Vec<(NotificationKind, Recipient)> {
        NotificationKind::ALL
            .into_iter()
            .flat_map(|kind| Recipient::ALL.into_iter().map(move |to| (kind, to)))
            .filter(|(kind, to)| kind.is_for(*to))
            .collect()
    }

    /// Refund notes, reminder variants, cancellers and expiry causes: the facts variants that
    /// change which template branch is taken.
    fn variants() -> Vec<Facts> {
        let mut all = Vec::new();
        for refund in [
            RefundNote::None,
            RefundNote::Full,
            RefundNote::NotPaid,
            RefundNote::Late,
        ] {
            for by in ["patient", "provider", "system"] {
                for expiry in ["not_accepted", "unpaid"] {
                    for (minutes, is_final) in [(24 * 60, false), (60, false), (15, true)] {
                        let mut facts = facts();
                        if let Some(payment) = facts.payment.as_mut() {
                            payment.refund = refund;
                        }
                        facts.cancelled_by = Some(by.to_owned());
                        facts.expiry = Some(expiry.to_owned());
                        facts.reminder = Some(ReminderFacts {
                            offset: Duration::from_secs(minutes * 60),
                            is_final,
                        });
                        all.push(facts);
                    }
                }
            }
        }
        all
    }

    #[test]
    fn text_messages_are_short_plain_and_say_who_when_and_where() {
        let when = "Tue 24 Nov 2026, 10:30 CET";
        for facts in variants() {
            for (kind, to) in sent() {
                for channel in [ChannelKind::Sms, ChannelKind::Whatsapp] {
                    let rendered = ok(kind, to, channel, &facts);
                    let text = &rendered.text;
                    let what = format!("{kind} to {to} over {channel}: {text}");
                    assert_eq!(rendered.subject, None, "{what}");
                    assert_eq!(rendered.html, None, "{what}");
                    assert!(text.chars().count() <= SHORT_TEXT_LIMIT, "too long: {what}");
                    assert!(text.is_ascii(), "not plain ASCII: {what}");
                    assert!(text.contains(when), "no time: {what}");
                    assert!(text.contains(MANAGE), "no link: {what}");
                    assert!(!text.contains("  ") && !text.contains("\n\n"), "{what}");
                    assert!(!text.contains('{') && !text.contains('}'), "{what}");
                    if to == Recipient::Patient {
                        assert!(text.contains(&facts.provider_name), "no provider: {what}");
                    }
                }
            }
        }
    }

    #[test]
    fn text_messages_link_to_the_meeting_for_reminders_and_to_the_consultation_otherwise() {
        let facts = facts();
        for (kind, to) in sent() {
            let text = ok(kind, to, ChannelKind::Sms, &facts).text;
            if kind == NotificationKind::Reminder {
                assert!(text.contains(&format!("Join: {JOIN}")), "{text}");
            } else {
                assert!(text.contains(MANAGE) && !text.contains(JOIN), "{text}");
            }
        }
        // A consultation without a call (messaging, in person) points to the consultation.
        let mut in_person = facts;
        in_person.mode = "in_person".to_owned();
        in_person.meeting_link = None;
        let text = ok(
            NotificationKind::Reminder,
            Recipient::Patient,
            ChannelKind::Whatsapp,
            &in_person,
        )
        .text;
        assert!(text.contains("in-person consultation"), "{text}");
        assert!(text.contains(&format!("Details: {MANAGE}")), "{text}");
    }

    #[test]
    fn emails_have_a_one_line_subject_a_text_part_and_an_html_part() {
        for facts in variants() {
            for (kind, to) in sent() {
                let (subject, text, html) = email(kind, to, &facts);
                let what = format!("{kind} to {to}: {subject}");
                assert!(!subject.is_empty() && subject.len() <= 100, "{what}");
                assert!(!subject.contains('\n'), "{what}");
                assert!(subject.contains("Tue 24 Nov at 10:30 CET"), "{what}");
                assert!(!subject.contains(&facts.provider_name), "{what}");
                assert!(
                    text.contains("Tue 24 Nov 2026, 10:30 CET"),
                    "{what}: {text}"
                );
                assert!(text.contains(MANAGE), "{what}: {text}");
                assert!(
                    !text.contains("<p>") && !text.contains("\n\n\n"),
                    "{what}: {text}"
                );
                assert!(html.starts_with("<!DOCTYPE html>"), "{what}: {html}");
                assert!(
                    html.contains(&format!("<title>{subject}</title>")),
                    "{html}"
                );
                assert!(
                    html.contains("Tue 24 Nov 2026, 10:30 CET"),
                    "{what}: {html}"
                );
                assert!(
                    html.contains(&format!("href=\"{MANAGE}\"")),
                    "{what}: {html}"
                );
                if to == Recipient::Patient {
                    assert!(text.contains(&facts.provider_name), "{what}: {text}");
                    assert!(html.contains(&facts.provider_name), "{what}: {html}");
                }
            }
        }
    }

    #[test]
    fn html_is_escaped_and_text_is_not() {
        let mut facts = facts();
        facts.provider_name = "Dr <script>alert(\"x\")</script> & Co".to_owned();
        let escaped = "Dr &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co";
        for (kind, to) in sent() {
            let (subject, text, html) = email(kind, to, &facts);
            assert!(!html.contains("<script>"), "{kind} to {to}: {html}");
            assert!(html.contains(escaped), "{kind} to {to}: {html}");
            assert!(
                text.contains(&facts.provider_name),
                "{kind} to {to}: {text}"
            );
            assert!(!subject.contains("script"), "{subject}");
        }
        // The template's own markup is not escaped.
        let (_, _, html) = email(NotificationKind::Accepted, Recipient::Patient, &facts);
        assert!(
            html.contains("<strong>Tue 24 Nov 2026, 10:30 CET</strong>"),
            "{html}"
        );
    }

    #[test]
    fn times_are_shown_in_the_recipients_time_zone() {
        let mut facts = facts();
        facts.timezone = chrono_tz::Europe::London;
        let london = ok(
            NotificationKind::Accepted,
            Recipient::Patient,
            ChannelKind::Sms,
            &facts,
        );
        assert!(
            london.text.contains("Tue 24 Nov 2026, 09:30 GMT"),
            "{}",
            london.text
        );
        facts.timezone = chrono_tz::Europe::Paris;
        let paris = ok(
            NotificationKind::Accepted,
            Recipient::Patient,
            ChannelKind::Sms,
            &facts,
        );
        assert!(
            paris.text.contains("Tue 24 Nov 2026, 10:30 CET"),
            "{}",
            paris.text
        );
        assert!(!paris.text.contains("09:30"), "{}", paris.text);

        let (subject, text, _) = email(NotificationKind::Accepted, Recipient::Patient, &facts);
        assert_eq!(
            subject,
            "Your consultation on Tue 24 Nov at 10:30 CET was accepted"
        );
        assert!(text.contains("(until 11:00)"), "{text}");

        // Summer time, and a zone whose only abbreviation is numeric.
        let summer = at(2026, 7, 1, 9, 30);
        assert_eq!(
            format_when(summer, chrono_tz::Europe::Paris),
            "Wed 1 Jul 2026, 11:30 CEST"
        );
        assert_eq!(
            format_when(summer, chrono_tz::America::New_York),
            "Wed 1 Jul 2026, 05:30 EDT"
        );
        assert_eq!(
            format_when(summer, chrono_tz::Europe::Istanbul),
            "Wed 1 Jul 2026, 12:30 Europe/Istanbul"
        );
        assert_eq!(
            format_when_short(summer, chrono_tz::UTC),
            "Wed 1 Jul at 09:30 UTC"
        );
    }

    #[test]
    fn a_decline_says_what_happens_to_the_payment() {
        let mut facts = facts();
        for (refund, says) in [
            (RefundNote::Full, "You will be refunded in full."),
            (RefundNote::NotPaid, "You have not been charged."),
        ] {
            // As the dispatcher builds it: the refund note without an amount.
            facts.payment = Some(PaymentFacts {
                amount_minor: 0,
                currency: String::new(),
                refund,
            });
            for channel in [ChannelKind::Sms, ChannelKind::Whatsapp, ChannelKind::Email] {
                let rendered = ok(
                    NotificationKind::Declined,
                    Recipient::Patient,
                    channel,
                    &facts,
                );
                assert!(rendered.text.contains(says), "{channel}: {}", rendered.text);
                if let Some(html) = rendered.html {
                    assert!(html.contains(&format!("<p>{says}</p>")), "{html}");
                }
            }
        }
        facts.payment = None;
        assert!(matches!(
            render(
                NotificationKind::Declined,
                Recipient::Patient,
                ChannelKind::Sms,
                &facts
            ),
            Err(RenderError::MissingFact {
                fact: "payment",
                ..
            })
        ));
    }

    #[test]
    fn refund_notes_are_said_to_the_patient_only() {
        let mut facts = facts();
        facts.cancelled_by = Some("patient".to_owned());
        if let Some(payment) = facts.payment.as_mut() {
            payment.refund = RefundNote::Late;
        }
        let late = "Cancellations this close to the start are not refunded.";
        let patient = ok(
            NotificationKind::Cancelled,
            Recipient::Patient,
            ChannelKind::Email,
            &facts,
        );
        assert!(patient.text.contains(late), "{}", patient.text);
        let provider = ok(
            NotificationKind::Cancelled,
            Recipient::Provider,
            ChannelKind::Email,
            &facts,
        );
        assert!(!provider.text.contains(late), "{}", provider.text);
        // No note: no sentence.
        if let Some(payment) = facts.payment.as_mut() {
            payment.refund = RefundNote::None;
        }
        let patient = ok(
            NotificationKind::Cancelled,
            Recipient::Patient,
            ChannelKind::Sms,
            &facts,
        );
        assert!(!patient.text.contains("refund"), "{}", patient.text);
        assert!(!patient.text.contains("charged"), "{}", patient.text);
    }

    #[test]
    fn a_receipt_shows_the_amount_with_its_currency() {
        let mut facts = facts();
        let receipt = |facts: &Facts, channel| {
            ok(
                NotificationKind::PaymentReceipt,
                Recipient::Patient,
                channel,
                facts,
            )
        };
        for channel in [ChannelKind::Sms, ChannelKind::Email] {
            let rendered = receipt(&facts, channel);
            assert!(rendered.text.contains("45.00 EUR"), "{}", rendered.text);
        }
        let (_, _, html) = email(NotificationKind::PaymentReceipt, Recipient::Patient, &facts);
        assert!(html.contains("<strong>45.00 EUR</strong>"), "{html}");

        facts.payment = Some(PaymentFacts {
            amount_minor: 4500,
            currency: "jpy".to_owned(),
            refund: RefundNote::None,
        });
        assert!(receipt(&facts, ChannelKind::Sms).text.contains("4500 JPY"));

        facts.payment = Some(PaymentFacts {
            amount_minor: 4500,
            currency: String::new(),
            refund: RefundNote::None,
        });
        assert!(matches!(
            render(
                NotificationKind::PaymentReceipt,
                Recipient::Patient,
                ChannelKind::Sms,
                &facts
            ),
            Err(RenderError::InvalidFact {
                fact: "payment.currency",
                ..
            })
        ));
        facts.payment = None;
        assert!(matches!(
            render(
                NotificationKind::PaymentReceipt,
                Recipient::Patient,
                ChannelKind::Email,
                &facts
            ),
            Err(RenderError::MissingFact {
                fact: "payment",
                ..
            })
        ));
    }

    #[test]
    fn money_is_formatted_from_minor_units() {
        let money = |minor, code| format_money(minor, code).expect("a valid currency");
        assert_eq!(money(4500, "EUR"), "45.00 EUR");
        assert_eq!(money(5, "usd"), "0.05 USD");
        assert_eq!(money(123_456, "GBP"), "1234.56 GBP");
        assert_eq!(money(0, "EUR"), "0.00 EUR");
        assert_eq!(money(-250, "EUR"), "-2.50 EUR");
        assert_eq!(money(4500, "JPY"), "4500 JPY");
        assert_eq!(money(12_345, "KWD"), "12.345 KWD");
        assert!(format_money(100, "EU").is_err());
        assert!(format_money(100, "E1R").is_err());
    }

    #[test]
    fn reminders_say_how_long_until_the_start_and_carry_the_meeting_link() {
        let mut facts = facts();
        for (minutes, is_final, words) in [
            (24 * 60, false, "in 24 hours"),
            (60, false, "in 1 hour"),
            (15, true, "in 15 minutes"),
        ] {
            facts.reminder = Some(ReminderFacts {
                offset: Duration::from_secs(minutes * 60),
                is_final,
            });
            for to in Recipient::ALL {
                for channel in [ChannelKind::Sms, ChannelKind::Email] {
                    let rendered = ok(NotificationKind::Reminder, to, channel, &facts);
                    let text = &rendered.text;
                    assert!(text.contains(&format!("starts {words}")), "{text}");
                    assert!(text.contains(JOIN), "{to} {channel}: {text}");
                    if let Some(html) = rendered.html {
                        assert!(html.contains(&format!("href=\"{JOIN}\"")), "{html}");
                    }
                    if let Some(subject) = rendered.subject {
                        assert!(subject.ends_with(&format!("starts {words}")), "{subject}");
                    }
                }
            }
            let sms = ok(
                NotificationKind::Reminder,
                Recipient::Patient,
                ChannelKind::Sms,
                &facts,
            );
            let opening = if is_final {
                "Starting soon:"
            } else {
                "Reminder:"
            };
            assert!(sms.text.starts_with(opening), "{}", sms.text);
        }
        facts.meeting_link = None;
        let (_, text, html) = email(NotificationKind::Reminder, Recipient::Patient, &facts);
        assert!(!text.contains("Join") && !html.contains("Join"), "{text}");
    }

    #[test]
    fn durations_read_as_words() {
        let words = |secs| until_words(Duration::from_secs(secs));
        assert_eq!(words(24 * 3600), "in 24 hours");
        assert_eq!(words(3600), "in 1 hour");
        assert_eq!(words(15 * 60), "in 15 minutes");
        assert_eq!(words(60), "in 1 minute");
        assert_eq!(words(90 * 60), "in 1 hour and 30 minutes");
        assert_eq!(words(3600 + 60 + 59), "in 1 hour and 1 minute");
        assert_eq!(words(30), "in less than a minute");
        assert_eq!(words(0), "now");
    }

    #[test]
    fn a_reschedule_shows_the_new_time_and_the_previous_one() {
        let mut facts = facts();
        let new = "Tue 24 Nov 2026, 10:30 CET";
        let previous = "Mon 23 Nov 2026, 16:00 CET";
        for to in Recipient::ALL {
            let sms = ok(NotificationKind::Rescheduled, to, ChannelKind::Sms, &facts).text;
            assert!(
                sms.contains(&format!("moved to {new} (was {previous})")),
                "{sms}"
            );
            let (subject, text, html) = email(NotificationKind::Rescheduled, to, &facts);
            assert_eq!(
                subject,
                "Your consultation has moved to Tue 24 Nov at 10:30 CET"
            );
            assert!(
                text.contains(&format!("New time: {new} (until 11:00)")),
                "{text}"
            );
            assert!(
                text.contains(&format!("Previous time: {previous}")),
                "{text}"
            );
            assert!(html.contains(&format!("<s>{previous}</s>")), "{html}");
        }
        facts.previous_starts_at = None;
        assert!(matches!(
            render(
                NotificationKind::Rescheduled,
                Recipient::Patient,
                ChannelKind::Email,
                &facts
            ),
            Err(RenderError::MissingFact {
                fact: "previous_starts_at",
                ..
            })
        ));
    }

    #[test]
    fn a_cancellation_says_who_cancelled() {
        let mut facts = facts();
        let name = facts.provider_name.clone();
        let cases = [
            ("patient", Recipient::Patient, "You cancelled".to_owned()),
            (
                "patient",
                Recipient::Provider,
                "The patient cancelled".to_owned(),
            ),
            ("provider", Recipient::Patient, format!("{name} cancelled")),
            ("provider", Recipient::Provider, "You cancelled".to_owned()),
            (
                "system",
                Recipient::Patient,
                "The clinic cancelled".to_owned(),
            ),
            (
                "admin",
                Recipient::Provider,
                "The clinic cancelled".to_owned(),
            ),
            (
                "clinic",
                Recipient::Patient,
                "The clinic cancelled".to_owned(),
            ),
        ];
        for (by, to, says) in cases {
            facts.cancelled_by = Some(by.to_owned());
            for channel in [ChannelKind::Sms, ChannelKind::Email] {
                let rendered = ok(NotificationKind::Cancelled, to, channel, &facts);
                assert!(
                    rendered.text.contains(&says),
                    "{by} to {to}: {}",
                    rendered.text
                );
                if let Some(html) = rendered.html {
                    assert!(html.contains(&says), "{by} to {to}: {html}");
                }
            }
        }
        facts.cancelled_by = Some("nobody".to_owned());
        assert!(matches!(
            render(
                NotificationKind::Cancelled,
                Recipient::Patient,
                ChannelKind::Sms,
                &facts
            ),
            Err(RenderError::InvalidFact {
                fact: "cancelled_by",
                ..
            })
        ));
        facts.cancelled_by = None;
        assert!(matches!(
            render(
                NotificationKind::Cancelled,
                Recipient::Patient,
                ChannelKind::Sms,
                &facts
            ),
            Err(RenderError::MissingFact {
                fact: "cancelled_by",
                ..
            })
        ));
    }

    #[test]
    fn an_expiry_says_why() {
        let mut facts = facts();
        for (cause, says) in [
            ("not_accepted", "was not accepted in time"),
            ("not_accepted_in_time", "was not accepted in time"),
            ("unpaid", "was not paid before the start"),
            ("unpaid_at_start", "was not paid before the start"),
        ] {
            facts.expiry = Some(cause.to_owned());
            for channel in [ChannelKind::Sms, ChannelKind::Email] {
                let text = ok(
                    NotificationKind::Expired,
                    Recipient::Patient,
                    channel,
                    &facts,
                )
                .text;
                assert!(text.contains(says), "{cause}: {text}");
            }
        }
        facts.expiry = Some("later".to_owned());
        assert!(render(
            NotificationKind::Expired,
            Recipient::Patient,
            ChannelKind::Sms,
            &facts
        )
        .is_err());
        facts.expiry = None;
        assert!(render(
            NotificationKind::Expired,
            Recipient::Patient,
            ChannelKind::Sms,
            &facts
        )
        .is_err());
    }

    #[test]
    fn reminders_need_to_know_which_one() {
        let mut facts = facts();
        facts.reminder = None;
        assert!(matches!(
            render(
                NotificationKind::Reminder,
                Recipient::Provider,
                ChannelKind::Sms,
                &facts
            ),
            Err(RenderError::MissingFact {
                fact: "reminder",
                ..
            })
        ));
    }

    #[test]
    fn combinations_that_are_never_sent_are_refused() {
        let facts = facts();
        let mut refused = 0;
        for kind in NotificationKind::ALL {
            for to in Recipient::ALL {
                if kind.is_for(to) {
                    continue;
                }
                refused += 1;
                for channel in [ChannelKind::Sms, ChannelKind::Whatsapp, ChannelKind::Email] {
                    assert!(
                        matches!(
                            render(kind, to, channel, &facts),
                            Err(RenderError::NotApplicable { kind: k, to: t }) if k == kind && t == to
                        ),
                        "{kind} to {to}"
                    );
                }
            }
        }
        assert_eq!(refused, 5);
        assert!(!NotificationKind::NewRequest.is_for(Recipient::Patient));
        assert!(!NotificationKind::Accepted.is_for(Recipient::Provider));
    }

    #[test]
    fn a_missing_variable_is_an_error_not_an_empty_string() {
        let env = environment().expect("the templates load");
        for (name, _) in TEMPLATES {
            let template = env.get_template(name).expect("a loaded template");
            let error = template
                .render(context! { unrelated => 1 })
                .expect_err(name);
            assert_eq!(
                error.kind(),
                minijinja::ErrorKind::UndefinedError,
                "{name}: {error}"
            );
        }
    }

    #[test]
    fn every_kind_has_its_templates() {
        let env = environment().expect("the templates load");
        for kind in NotificationKind::ALL {
            for name in [
                format!("sms/{kind}.txt.j2"),
                format!("email/{kind}.subject.txt.j2"),
                format!("email/{kind}.txt.j2"),
                format!("email/{kind}.html.j2"),
            ] {
                assert!(env.get_template(&name).is_ok(), "{name}");
            }
        }
    }

    #[test]
    fn facts_carry_no_medical_information() {
        // A new field must be added here on purpose, after checking it is not medical
        // (no reason, notes, symptoms, diagnosis): it could reach an SMS or a subject.
        let json = serde_json::to_value(facts()).expect("facts serialize");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "cancelled_by",
                "consultation_id",
                "ends_at",
                "expiry",
                "manage_link",
                "meeting_link",
                "mode",
                "payment",
                "previous_starts_at",
                "provider_name",
                "reminder",
                "starts_at",
                "timezone",
            ]
        );
        assert_eq!(json["timezone"], "Europe/Paris");
        let back: Facts = serde_json::from_value(json).expect("facts deserialize");
        assert_eq!(back, facts());
    }

    #[test]
    fn names_round_trip() {
        for kind in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("serializes"),
                kind.as_str()
            );
        }
        assert_eq!(
            NotificationKind::parse("payment_receipt"),
            Some(NotificationKind::PaymentReceipt)
        );
        assert_eq!(NotificationKind::parse("PaymentReceipt"), None);
        for to in Recipient::ALL {
            assert_eq!(Recipient::parse(to.as_str()), Some(to));
            assert_eq!(serde_json::to_value(to).expect("serializes"), to.as_str());
        }
        assert_eq!(
            serde_json::to_value(RefundNote::NotPaid).expect("serializes"),
            "not_paid"
        );
    }
}
