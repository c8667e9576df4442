//! The page's HTML, in Japanese and English. maud escapes every value; no
//! page holds a typed number, and only the form holds a value from the
//! request (the CSRF value, which the server drew).

use maud::{html, Markup, DOCTYPE};
use mnvault_core::collection::{CollectionForm, UnusableLink};
use mnvault_core::purpose::Purpose;
use time::{OffsetDateTime, UtcOffset};

use super::form::{field_name, FieldError};

/// The page's language: Japanese unless the query says `lang=en`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// 日本語 (the default).
    Ja,
    /// English.
    En,
}

impl Lang {
    /// Reads `lang=en` from a query; anything else is Japanese.
    pub fn of_query(query: Option<&str>) -> Self {
        match query.unwrap_or_default().split('&').any(|pair| pair == "lang=en") {
            true => Lang::En,
            false => Lang::Ja,
        }
    }

    /// The `<html lang>` code and the query value.
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }

    fn pick(self, ja: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    /// The link to the other language: the same page, the other `lang`.
    fn switch(self) -> Markup {
        match self {
            Lang::Ja => html! { a href="?lang=en" hreflang="en" lang="en" { "English" } },
            Lang::En => html! { a href="?lang=ja" hreflang="ja" lang="ja" { "日本語" } },
        }
    }
}

/// A purpose's English name.
fn purpose_en(purpose: Purpose) -> &'static str {
    match purpose.id() {
        "withholding-slip" => "Employment income withholding slip",
        "salary-payment-report" => "Salary payment report (to the municipality)",
        "retirement-income-slip" => "Retirement income withholding slip",
        "payment-record" => "Statement of payment of fees and remuneration",
        "dependent-deduction-declaration" => "Declaration for exemption for dependants",
        "social-insurance-qualification" => "Health insurance and pension enrolment or withdrawal",
        "social-insurance-dependent-change" => "Health insurance dependant notification",
        "employment-insurance-qualification" => "Employment insurance enrolment or withdrawal",
        "employment-insurance-benefit" => "Childcare and family-care leave benefit application",
        _ => "Filing required by law",
    }
}

fn purpose_name(lang: Lang, purpose: Purpose) -> &'static str {
    match lang {
        Lang::Ja => purpose.name_ja(),
        Lang::En => purpose_en(purpose),
    }
}

/// Unix milliseconds as a time in Japan (JST, UTC+9, no summer time).
fn expiry(lang: Lang, unix_ms: i64) -> String {
    let jst = UtcOffset::from_hms(9, 0, 0).expect("a valid offset");
    let Ok(at) = OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)) else {
        return String::new();
    };
    let at = at.to_offset(jst);
    match lang {
        Lang::Ja => format!(
            "{}年{}月{}日 {:02}:{:02}(日本時間)",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        ),
        Lang::En => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} (Japan time, JST)",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute()
        ),
    }
}

/// The frame every page shares.
fn layout(lang: Lang, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                meta name="robots" content="noindex, nofollow";
                title { (title) }
                link rel="stylesheet" href="/static/collect.css";
                script src="/static/collect.js" defer {}
            }
            body {
                header class="bar" {
                    span class="brand" { (lang.pick("マイナンバーの提出", "My Number submission")) }
                    nav class="lang" aria-label=(lang.pick("言語", "Language")) { (lang.switch()) }
                }
                main { (body) }
            }
        }
    }
}

/// A form-level message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormMessage {
    /// Some numbers were refused: type them again.
    ReEnter,
    /// The vault refused the numbers as a whole.
    Refused,
}

impl FormMessage {
    /// The text.
    pub fn text(self, lang: Lang) -> &'static str {
        match self {
            FormMessage::ReEnter => lang.pick(
                "入力に誤りがあります。安全のため、入力された番号は表示していません。すべての欄にもう一度入力してください。",
                "Some numbers need correcting. For your safety the numbers you typed are not shown again: please enter every number again.",
            ),
            FormMessage::Refused => lang.pick(
                "番号を受け付けられませんでした。番号を確認して、すべての欄にもう一度入力してください。",
                "The numbers could not be accepted. Please check them and enter every number again.",
            ),
        }
    }
}

/// The form for `collection`, with a message per refused field.
pub fn form(
    lang: Lang,
    collection: &CollectionForm,
    csrf: &str,
    errors: &[FieldError],
    message: Option<FormMessage>,
) -> Markup {
    let company = collection.company.as_str();
    let body = html! {
        h1 { (lang.pick("マイナンバー(個人番号)のご提出", "Submit your My Number")) }
        p class="lead" {
            @match lang {
                Lang::Ja => { strong { (company) } " から、マイナンバーの提出をお願いしています。" },
                Lang::En => { strong { (company) } " asks you for your My Number (個人番号)." },
            }
        }
        @if collection.reissue {
            p class="lead" id="reissue" {
                (lang.pick(
                    "番号が新しくなった方へ: 市区町村から通知された新しいマイナンバーを入力してください。以前の番号は入力しないでください。",
                    "Your number was changed: enter the new My Number your municipality gave you, not the old one.",
                ))
            }
        }
        section aria-labelledby="purposes-title" {
            h2 id="purposes-title" { (lang.pick("利用目的", "What it is used for")) }
            ul class="purposes" {
                @for purpose in &collection.purposes { li { (purpose_name(lang, *purpose)) } }
            }
        }
        p class="expiry" {
            (lang.pick("このページの有効期限: ", "This page works until: "))
            strong { (expiry(lang, collection.expires_at)) }
        }
        p class="note" {
            (lang.pick(
                "番号はこのページから直接、安全に保管されます。会社の担当者にも番号そのものは見えません。",
                "Your numbers go straight from this page into secure storage; the company's staff never see the numbers themselves.",
            ))
        }
        form id="collect-form" method="post" autocomplete="off"
            data-msg-empty=(lang.pick("マイナンバー(12桁)を入力してください。", "Enter the 12-digit My Number."))
            data-msg-length=(lang.pick("マイナンバーは12桁です(今は{n}桁)。", "A My Number has 12 digits (this has {n})."))
            data-msg-char=(lang.pick("数字・ハイフン・空白以外の文字があります({n}文字目)。", "Character {n} is not a digit, hyphen or space."))
            data-msg-check=(lang.pick("番号が正しくありません(最後の桁が合いません)。カードを見て確認してください。", "This number is not valid (its last digit does not match). Check the card."))
            data-msg-ok=(lang.pick("入力を確認しました。", "Looks right."))
            data-msg-fix=(lang.pick("誤りのある欄があります。直してから送信してください。", "Some numbers need correcting before you submit."))
            data-msg-sending=(lang.pick("送信しています…", "Sending…"))
            data-msg-network=(lang.pick("通信できませんでした。入力はそのままです。少し待ってからもう一度送信してください。", "The page could not reach the server. Your entries are kept; please try again in a moment."))
        {
            input type="hidden" name="csrf" value=(csrf);
            div id="form-message" class="form-message" role="status" aria-live="polite" {
                @if let Some(message) = message { (message.text(lang)) }
            }
            @for (index, relation) in collection.asked.iter().enumerate() {
                @let name = field_name(index);
                @let error = errors.iter().find(|error| error.index == index);
                div class="field" {
                    label for=(name) {
                        @match lang {
                            Lang::Ja => { (relation.name_ja()) "のマイナンバー(12桁)" },
                            Lang::En => { (relation.name_en()) ": My Number (12 digits)" },
                        }
                    }
                    input id=(name) name=(name) type="text" inputmode="numeric" autocomplete="off"
                        autocorrect="off" autocapitalize="off" spellcheck="false" maxlength="40"
                        aria-describedby={ (name) "-hint " (name) "-msg" }
                        aria-invalid=(if error.is_some() { "true" } else { "false" });
                    p id={ (name) "-hint" } class="hint" {
                        (lang.pick("ハイフンや空白は入れても入れなくても構いません。全角数字も使えます。", "Hyphens and spaces are fine; full-width digits too."))
                    }
                    p id={ (name) "-msg" } class="msg" aria-live="polite" {
                        @if let Some(error) = error { (error.message(lang)) }
                    }
                }
            }
            button type="submit" class="submit" { (lang.pick("送信する", "Submit")) }
        }
    };
    layout(lang, lang.pick("マイナンバーのご提出", "Submit your My Number"), body)
}

/// What a page of a link that does not work says.
pub fn unusable_message(lang: Lang, why: UnusableLink) -> &'static str {
    match why {
        UnusableLink::UnknownOrUsed => lang.pick(
            "このリンクは使えません。すでに提出が済んでいるか、リンクが正しくありません。提出が必要な場合は、会社の担当者に新しいリンクを依頼してください。",
            "This link cannot be used: the numbers were already submitted, or the link is not right. If you still need to submit, ask your employer for a new link.",
        ),
        UnusableLink::Expired => lang.pick(
            "このリンクは有効期限が切れています。会社の担当者に新しいリンクを依頼してください。",
            "This link has expired. Please ask your employer for a new link.",
        ),
        UnusableLink::Cancelled => lang.pick(
            "このリンクは会社によって取り消されました。提出が必要な場合は、会社の担当者に新しいリンクを依頼してください。",
            "Your employer cancelled this link. If you still need to submit, ask your employer for a new link.",
        ),
    }
}

/// The page of a link that does not work: the same for unknown, used and
/// malformed links.
pub fn unusable(lang: Lang, why: UnusableLink) -> Markup {
    let title = match why {
        UnusableLink::UnknownOrUsed => lang.pick("このリンクは使えません", "This link cannot be used"),
        UnusableLink::Expired => lang.pick("リンクの有効期限切れ", "This link has expired"),
        UnusableLink::Cancelled => lang.pick("リンクは取り消されました", "This link was cancelled"),
    };
    layout(lang, title, html! { h1 { (title) } p { (unusable_message(lang, why)) } })
}

/// Refusals that say nothing of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many requests.
    TooMany,
    /// The CSRF check failed.
    Csrf,
    /// The form is not the page's form.
    BadForm,
    /// The vault could not answer.
    Unavailable,
    /// A path the page does not have.
    NoSuchPage,
}

impl Refusal {
    fn title(self, lang: Lang) -> &'static str {
        match self {
            Refusal::TooMany => lang.pick("しばらくお待ちください", "Please wait a moment"),
            Refusal::Csrf => lang.pick("ページを再読み込みしてください", "Please reload the page"),
            Refusal::BadForm => lang.pick("送信内容を受け付けられません", "The form could not be read"),
            Refusal::Unavailable => lang.pick("ただいま受け付けできません", "Not available right now"),
            Refusal::NoSuchPage => lang.pick("ページが見つかりません", "Page not found"),
        }
    }

    /// The message.
    pub fn message(self, lang: Lang) -> &'static str {
        match self {
            Refusal::TooMany => lang.pick(
                "短い時間に多くの操作がありました。1分ほど待ってから、もう一度お試しください。",
                "There were too many attempts in a short time. Please wait about a minute and try again.",
            ),
            Refusal::Csrf => lang.pick(
                "ページの有効期間が切れたか、別の画面から送信されました。リンクを開き直して(再読み込みして)、もう一度入力してください。",
                "This page is out of date or was sent from elsewhere. Please open the link again (reload) and enter the numbers again.",
            ),
            Refusal::BadForm => lang.pick(
                "送信内容がこのページのものではありません。リンクを開き直して、もう一度入力してください。",
                "What was sent is not this page's form. Please open the link again and enter the numbers again.",
            ),
            Refusal::Unavailable => lang.pick(
                "ただいま処理できません。入力した番号は保存されていません。しばらくしてから、もう一度お試しください。",
                "The numbers could not be processed right now and nothing was stored. Please try again later.",
            ),
            Refusal::NoSuchPage => lang.pick(
                "お探しのページはありません。会社から届いたリンクをそのまま開いてください。",
                "There is no such page. Please open the link your employer sent exactly as it is.",
            ),
        }
    }
}

/// A refusal's page.
pub fn refusal(lang: Lang, kind: Refusal) -> Markup {
    let title = kind.title(lang);
    layout(lang, title, html! { h1 { (title) } p { (kind.message(lang)) } })
}

/// The confirmation: no number, no link.
pub fn done(lang: Lang) -> Markup {
    let title = lang.pick("提出を受け付けました", "Received");
    layout(
        lang,
        title,
        html! {
            h1 id="done" { (title) }
            p { (lang.pick(
                "マイナンバーの提出を受け付けました。ありがとうございました。このページは閉じて構いません。",
                "Your My Number has been received. Thank you. You can close this page now.",
            )) }
        },
    )
}
