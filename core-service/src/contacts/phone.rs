//! Phone numbers in E.164 form, normalised from what Charles-era senders send.

use std::fmt;

use phonenumber::country;
use phonenumber::metadata::DATABASE;

/// A phone number that is known to be in E.164 form (`+` and 8 to 15 digits, a known country
/// calling code and a national number of a possible length for that country).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

/// Decodes the phone-number metadata now. The crate decodes it on first use, which takes about
/// 140 ms in a release build: without this, the first request with a phone number after a start
/// waits for it.
pub fn load_metadata() {
    let _: &phonenumber::metadata::Database = &DATABASE;
}

/// Why a phone number was refused; the `Display` text is shown to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("is required")]
    Missing,
    #[error("may contain only digits, a leading +, spaces, dashes, dots and parentheses")]
    InvalidCharacters,
    #[error(
        "is a national number (leading 0) and no default region is configured; send it in E.164 form such as +4915112345678"
    )]
    NationalWithoutRegion,
    #[error("has an unknown country calling code")]
    UnknownCountryCode,
    #[error("is too short for its country")]
    TooShort,
    #[error("is too long for its country")]
    TooLong,
}

/// An E.164 number taken apart the way CRMs such as Twenty store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneParts {
    /// Country calling code digits, `49`.
    pub calling_code: u16,
    /// The national significant number, `15112345678` (leading zeros kept).
    pub national_number: String,
    /// ISO 3166 region, `DE`, when the number identifies one.
    pub region: Option<String>,
}

/// Splits an E.164 number into calling code, national number and region.
pub fn split(e164: &str) -> Option<PhoneParts> {
    let parsed = phonenumber::parse(None, e164).ok()?;
    let calling_code = parsed.code().value();
    let national_number = e164
        .strip_prefix('+')?
        .strip_prefix(&calling_code.to_string())?
        .to_owned();
    let region = parsed.country().id().map(|id| id.as_ref().to_owned());
    Some(PhoneParts {
        calling_code,
        national_number,
        region,
    })
}

/// E.164 allows at most 15 digits after the `+`.
const MAX_E164_DIGITS: usize = 15;

/// Normalises `raw` by the SPEC §2.1 rules:
/// spaces, dashes, dots and parentheses are dropped; a leading `00` becomes `+`; digits without
/// `+` that do not start with `0` already carry a country code (Charles clients send
/// `491573758431`) and get the `+`; a national number with a leading `0` is read in
/// `default_region`, and refused without one.
///
/// The result must be a *possible* number (known country code, national number of a length used
/// in that country), not a number in a currently allocated range: libphonenumber's stricter
/// validity check rejects real Charles-era numbers such as `+491573758431`.
pub fn normalize(
    raw: &str,
    default_region: Option<country::Id>,
) -> Result<PhoneNumber, PhoneError> {
    let compact: String = raw
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '(' | ')'))
        .collect();
    if compact.is_empty() {
        return Err(PhoneError::Missing);
    }
    let (has_plus, digits) = match compact.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, compact.as_str()),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PhoneError::InvalidCharacters);
    }

    let international = if has_plus {
        format!("+{digits}")
    } else if let Some(rest) = digits.strip_prefix("00") {
        format!("+{rest}")
    } else if digits.starts_with('0') {
        let region = default_region.ok_or(PhoneError::NationalWithoutRegion)?;
        let parsed = phonenumber::parse(Some(region), digits).map_err(parse_problem)?;
        // Display keeps the leading zeros that belong to the number (Italy's `06…`).
        format!("+{}{}", parsed.code().value(), parsed.national())
    } else {
        format!("+{digits}")
    };
    check_possible(&international)
}

/// What a number libphonenumber cannot parse is wrong with, in the caller's terms.
fn parse_problem(error: phonenumber::ParseError) -> PhoneError {
    match error {
        phonenumber::ParseError::InvalidCountryCode => PhoneError::UnknownCountryCode,
        phonenumber::ParseError::TooLong => PhoneError::TooLong,
        _ => PhoneError::TooShort,
    }
}

fn check_possible(international: &str) -> Result<PhoneNumber, PhoneError> {
    let digit_count = international.len() - 1;
    if digit_count > MAX_E164_DIGITS {
        return Err(PhoneError::TooLong);
    }
    let parsed = phonenumber::parse(None, international).map_err(parse_problem)?;
    let code = parsed.code().value();
    let regions = DATABASE
        .by_code(&code)
        .ok_or(PhoneError::UnknownCountryCode)?;
    let lengths = regions.iter().flat_map(|region| {
        let descriptors = region.descriptors();
        // libphonenumber's metadata leaves the general lengths empty; a number is possible
        // when its length fits any kind of number of the country.
        [
            Some(descriptors.general()),
            descriptors.fixed_line(),
            descriptors.mobile(),
            descriptors.toll_free(),
            descriptors.premium_rate(),
            descriptors.shared_cost(),
            descriptors.personal_number(),
            descriptors.voip(),
            descriptors.pager(),
            descriptors.uan(),
            descriptors.voicemail(),
        ]
        .into_iter()
        .flatten()
        .flat_map(|descriptor| descriptor.possible_length().iter().copied())
    });
    let (Some(shortest), Some(longest)) = (lengths.clone().min(), lengths.max()) else {
        return Err(PhoneError::UnknownCountryCode);
    };
    // The number is the one parsed, not the digits sent: the parser drops a trunk prefix written
    // after the country code ("+49 (0)151 …", a common spelling), which would otherwise make a
    // second contact and a second deduplication key for one phone. The national number's
    // display keeps the leading zeros that belong to it (Italy's `06…`).
    let national = parsed.national().to_string();
    match u16::try_from(national.len()).unwrap_or(u16::MAX) {
        length if length < shortest => Err(PhoneError::TooShort),
        length if length > longest => Err(PhoneError::TooLong),
        _ => Ok(PhoneNumber(format!("+{code}{national}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_split_into_calling_code_national_number_and_region() {
        let german = split("+4915112345678").expect("splits");
        assert_eq!(german.calling_code, 49);
        assert_eq!(german.national_number, "15112345678");
        assert_eq!(german.region.as_deref(), Some("DE"));
        // Italian landlines keep their leading zero inside the national number.
        assert_eq!(
            split("+390612345678").expect("splits").national_number,
            "0612345678"
        );
    }

    fn ok(raw: &str) -> String {
        normalize(raw, None)
            .map(PhoneNumber::into_string)
            .unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    #[test]
    fn international_forms_normalise_to_e164() {
        assert_eq!(ok("+4915112345678"), "+4915112345678");
        assert_eq!(ok("+49 151 1234-5678"), "+4915112345678");
        assert_eq!(ok("+49 (151) 123.456.78"), "+4915112345678");
        assert_eq!(ok("004915112345678"), "+4915112345678");
        assert_eq!(ok("491573758431"), "+491573758431");
        assert_eq!(ok("+1 415 555 2671"), "+14155552671");
    }

    #[test]
    fn a_trunk_prefix_written_after_the_country_code_is_dropped() {
        assert_eq!(ok("+49 (0)151 12345678"), "+4915112345678");
        assert_eq!(ok("0049 (0)151 12345678"), "+4915112345678");
        assert_eq!(ok("+44 (0)20 7946 0958"), "+442079460958");
        assert_eq!(ok("+43 (0)664 1234567"), "+436641234567");
        // Italy's leading zero is part of the number, not a trunk prefix.
        assert_eq!(ok("+39 06 1234 5678"), "+390612345678");
    }

    #[test]
    fn national_numbers_need_a_region() {
        assert_eq!(
            normalize("015112345678", None),
            Err(PhoneError::NationalWithoutRegion)
        );
        let with_region =
            normalize("0151 12345678", Some(country::Id::DE)).map(PhoneNumber::into_string);
        assert_eq!(with_region, Ok("+4915112345678".to_owned()));
        // In Italy the leading zero of a landline belongs to the number.
        let italian =
            normalize("06 1234 5678", Some(country::Id::IT)).map(PhoneNumber::into_string);
        assert_eq!(italian, Ok("+390612345678".to_owned()));
        // A national number too long to parse is called too long, not too short.
        assert_eq!(
            normalize("0151123456789012345678", Some(country::Id::DE)),
            Err(PhoneError::TooLong)
        );
        assert_eq!(
            normalize("01", Some(country::Id::DE)),
            Err(PhoneError::TooShort)
        );
    }

    #[test]
    fn malformed_numbers_are_refused() {
        assert_eq!(normalize("", None), Err(PhoneError::Missing));
        assert_eq!(normalize("  ", None), Err(PhoneError::Missing));
        assert_eq!(
            normalize("+49abc12345", None),
            Err(PhoneError::InvalidCharacters)
        );
        assert_eq!(normalize("+", None), Err(PhoneError::InvalidCharacters));
        assert_eq!(
            normalize("++4915112345678", None),
            Err(PhoneError::InvalidCharacters)
        );
        assert_eq!(normalize("+49123", None), Err(PhoneError::TooShort));
        assert_eq!(
            normalize("+4915112345678901234", None),
            Err(PhoneError::TooLong)
        );
        assert_eq!(
            normalize("+999123456789", None),
            Err(PhoneError::UnknownCountryCode)
        );
    }
}
