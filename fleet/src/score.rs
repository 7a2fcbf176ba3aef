//! The suitability score (SS) of one shipment for one driver, as the original exercise defines it:
//!
//! - the street name's length is even: base SS = vowels in the driver's name × 1.5;
//! - it is odd: base SS = consonants in the driver's name × 1;
//! - the street name's length and the driver name's length share a factor other than 1: SS = base × 1.5.
//!
//! Vowels are `a e i o u` in either case; consonants are every other letter (`char::is_alphabetic`);
//! spaces, digits and punctuation are neither. Lengths count characters, spaces included.
//!
//! The street name is taken from the address: everything from the first comma on is dropped, then a
//! leading house number (a first word that starts with a digit, such as `44` or `12B`) is dropped, and the
//! rest is trimmed: `"44 Fake Dr., San Diego, CA"` → `"Fake Dr."`. An address with neither a comma nor a
//! house number is its own street name (trimmed); one that is only a number keeps it.

use serde::Serialize;

/// A score in quarters: `Quarters(9)` is 2.25. Every suitability score is a whole number of quarters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Quarters(pub u64);

impl Quarters {
    /// The score as a number.
    pub fn value(self) -> f64 {
        self.0 as f64 / 4.0
    }
}

/// The street name of an address (see the module doc for the rule).
///
/// ```
/// use tributary_fleet::street_name;
/// assert_eq!(street_name("44 Fake Dr., San Diego, CA 92122"), "Fake Dr.");
/// assert_eq!(street_name("Main Street"), "Main Street");
/// ```
pub fn street_name(address: &str) -> &str {
    let head = address.split(',').next().unwrap_or_default().trim();
    let mut words = head.splitn(2, char::is_whitespace);
    let first = words.next().unwrap_or_default();
    match words.next() {
        Some(rest) if first.starts_with(|c: char| c.is_ascii_digit()) && !rest.trim().is_empty() => rest.trim(),
        _ => head,
    }
}

fn is_vowel(c: char) -> bool {
    matches!(c.to_ascii_lowercase(), 'a' | 'e' | 'i' | 'o' | 'u')
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// A score with every number that went into it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explained {
    /// The street name taken from the address.
    pub street: String,
    /// Its length in characters.
    pub street_length: u64,
    /// Whether that length is even.
    pub street_length_even: bool,
    /// The driver name's length in characters.
    pub driver_length: u64,
    /// Vowels in the driver's name.
    pub vowels: u64,
    /// Consonants in the driver's name.
    pub consonants: u64,
    /// `1.5 × vowels` (even street) or `consonants` (odd street).
    pub base: f64,
    /// The greatest common divisor of the two lengths.
    pub gcd: u64,
    /// Whether the lengths share a factor other than 1 (gcd > 1), which adds 50%.
    pub common_factor: bool,
    /// The suitability score.
    pub score: f64,
}

/// The score of `address` for `driver`, in quarters.
///
/// ```
/// use tributary_fleet::score::score;
/// // "Fake Dr." has 8 characters (even): 4 vowels in "Alice Smith" × 1.5 = 6;
/// // 8 and 11 share no factor, so the score stays 6 (24 quarters).
/// assert_eq!(score("44 Fake Dr., San Diego", "Alice Smith").value(), 6.0);
/// ```
pub fn score(address: &str, driver: &str) -> Quarters {
    Street::of(address).score(Name::of(driver))
}

/// What a score reads of an address: its street name's length in characters. Read once per address, so a
/// plan reads each text once, not once per pair (a 2,000 × 2,000 plan read every text 2,000 times).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Street {
    len: u64,
}

/// What a score reads of a driver's name: its length in characters, its vowels and its consonants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name {
    len: u64,
    vowels: u64,
    consonants: u64,
}

impl Street {
    /// The street of `address`.
    pub fn of(address: &str) -> Street {
        Street { len: street_name(address).chars().count() as u64 }
    }

    /// The score of this street for `name`, in quarters.
    pub fn score(self, name: Name) -> Quarters {
        let base = if self.len.is_multiple_of(2) { 6 * name.vowels } else { 4 * name.consonants };
        let common = gcd(self.len, name.len) > 1;
        Quarters(if common { base * 3 / 2 } else { base })
    }
}

impl Name {
    /// The name `driver`.
    pub fn of(driver: &str) -> Name {
        let (mut len, mut vowels, mut consonants) = (0, 0, 0);
        for c in driver.chars() {
            len += 1;
            if is_vowel(c) {
                vowels += 1;
            } else if c.is_alphabetic() {
                consonants += 1;
            }
        }
        Name { len, vowels, consonants }
    }
}

/// The score of `address` for `driver` with the numbers behind it.
pub fn explain(address: &str, driver: &str) -> Explained {
    let (street, name) = (Street::of(address), Name::of(driver));
    let even = street.len.is_multiple_of(2);
    let g = gcd(street.len, name.len);
    Explained {
        street: street_name(address).to_owned(),
        street_length: street.len,
        street_length_even: even,
        driver_length: name.len,
        vowels: name.vowels,
        consonants: name.consonants,
        base: if even { 1.5 * name.vowels as f64 } else { name.consonants as f64 },
        gcd: g,
        common_factor: g > 1,
        score: street.score(name).value(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn street_names() {
        assert_eq!(street_name("44 Fake Dr., San Diego, CA"), "Fake Dr.");
        assert_eq!(street_name("  12B Baker St , London"), "Baker St");
        assert_eq!(street_name("Main Street"), "Main Street");
        assert_eq!(street_name("Main Street, Springfield"), "Main Street");
        assert_eq!(street_name("221"), "221");
        assert_eq!(street_name("One Infinite Loop, Cupertino"), "One Infinite Loop");
    }

    #[test]
    fn hand_computed_scores() {
        // Even street "Fake Dr." (8): vowels of "Daniel Davidson" (15 chars) = a,i,e,a,i,o = 6 → 9;
        // gcd(8, 15) = 1 → 9.
        assert_eq!(score("44 Fake Dr., San Diego", "Daniel Davidson").value(), 9.0);
        // Even street "Elm Street" (10), driver "Bo" (2): 1 vowel × 1.5 = 1.5; gcd(10, 2) = 2 → × 1.5 = 2.25.
        assert_eq!(score("1 Elm Street", "Bo").value(), 2.25);
        // Odd street "Oak Ave" (7): consonants of "Jo Ann" (6 chars) = J, n, n = 3 → 3; gcd(7, 6) = 1 → 3.
        assert_eq!(score("9 Oak Ave, Town", "Jo Ann").value(), 3.0);
        // Odd street "Oak Ave" (7) and a 14-character name share 7 → 1.5 × consonants.
        let name = "Mark Zuckerbrg"; // 14 chars, consonants M r k Z c k r b r g = 10
        assert_eq!(name.chars().count(), 14);
        assert_eq!(score("Oak Ave", name).value(), 15.0);
        // Case does not matter, spaces count in lengths but are neither vowels nor consonants.
        assert_eq!(score("Fake Dr.", "ALICE SMITH"), score("Fake Dr.", "alice smith"));
        let e = explain("44 Fake Dr., San Diego", "Alice Smith");
        assert_eq!((e.street_length, e.driver_length, e.vowels, e.consonants), (8, 11, 4, 6));
        assert_eq!((e.base, e.gcd, e.common_factor, e.score), (6.0, 1, false, 6.0));
        // Digits and punctuation are neither.
        let e = explain("Fake Dr.", "R2-D2");
        assert_eq!((e.vowels, e.consonants), (0, 2));
    }
}
