//! The fixed list of 256 code words.
//!
//! Composed for this project (not copied from a published list). Each word carries exactly 8 bits,
//! so a word's index in [`WORDS`] is one byte of the code's secret. The rules, checked by the
//! tests below:
//!
//! - lowercase ASCII `a`–`z` only, 4 to 6 letters, common and easy to spell and say;
//! - sorted and distinct, so [`super::word_index`] can binary-search;
//! - no word is a prefix of another, so a word that was typed completely is never mistaken for
//!   the start of a longer one;
//! - no two words sound alike (only one of `carrot`/`carat`, no `bear`/`bare`, …) and nothing
//!   offensive.
//!
//! Changing this list changes what every code means: both peers must use the same list.

/// The 256 code words, sorted; index `i` stands for the byte value `i`.
pub const WORDS: [&str; 256] = [
    "acorn", "actor", "agent", "alarm", "album", "alpine", "amber", "anchor", "ankle", "apple",
    "apron", "arena", "arrow", "atlas", "attic", "autumn", "award", "badger", "bagel", "baker",
    "bamboo", "banana", "banjo", "barrel", "basil", "basket", "beacon", "beaver", "bench", "bison",
    "bonus", "bottle", "branch", "breeze", "brick", "bridge", "bronze", "brook", "bubble",
    "bucket", "butter", "button", "cabin", "cable", "cactus", "camel", "camera", "canal", "candle",
    "canoe", "canyon", "cargo", "carpet", "carrot", "castle", "cedar", "chapel", "cherry", "chess",
    "cinema", "circle", "citrus", "clock", "cloud", "clover", "cocoa", "comet", "copper", "coral",
    "cotton", "cougar", "cowboy", "coyote", "crane", "crayon", "crown", "daisy", "dancer", "delta",
    "denim", "dinner", "doctor", "donkey", "dragon", "eagle", "easel", "echo", "elbow", "ember",
    "engine", "fabric", "falcon", "ferry", "finch", "forest", "fossil", "frost", "fudge", "galaxy",
    "garden", "garlic", "ginger", "globe", "glove", "golden", "goose", "grape", "gravel", "guitar",
    "hammer", "harbor", "harp", "hazel", "helmet", "heron", "hockey", "honey", "hotel", "igloo",
    "indigo", "iris", "island", "ivory", "jacket", "jaguar", "jelly", "jewel", "jungle", "kayak",
    "kettle", "kitten", "kiwi", "koala", "ladder", "lagoon", "laptop", "lava", "lemon", "lizard",
    "locket", "lotus", "magnet", "mango", "maple", "marble", "meadow", "melon", "meteor", "mint",
    "mitten", "monkey", "moose", "muffin", "museum", "napkin", "nectar", "needle", "nickel",
    "noodle", "oasis", "olive", "onion", "opal", "opera", "orange", "orbit", "orchid", "otter",
    "oyster", "paddle", "palace", "panda", "paper", "parrot", "pasta", "peach", "pearl", "pebble",
    "pencil", "pepper", "piano", "pickle", "pillow", "pilot", "planet", "plaza", "pocket", "pony",
    "poppy", "potato", "puppet", "purple", "puzzle", "python", "quartz", "quilt", "rabbit",
    "radar", "radio", "ranch", "raven", "rhino", "ribbon", "river", "robin", "robot", "rocket",
    "saddle", "salad", "salmon", "sandal", "scarf", "shadow", "shovel", "silver", "sketch",
    "spider", "spoon", "statue", "studio", "sugar", "summit", "sunset", "swan", "tango", "teapot",
    "temple", "tiger", "timber", "toast", "tomato", "topaz", "trout", "tulip", "tundra", "tunnel",
    "turtle", "uncle", "valley", "vapor", "velvet", "viking", "violin", "waffle", "wagon",
    "wallet", "walnut", "walrus", "willow", "window", "wizard", "yacht", "yellow", "yogurt",
    "zebra", "zipper",
];

#[cfg(test)]
mod tests {
    use super::WORDS;

    #[test]
    fn exactly_256_words() {
        assert_eq!(WORDS.len(), 256);
    }

    #[test]
    fn sorted_and_distinct() {
        for pair in WORDS.windows(2) {
            assert!(pair[0] < pair[1], "{:?} must sort strictly before {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn lengths_and_charset() {
        for word in WORDS {
            assert!((4..=6).contains(&word.len()), "{word:?} must have 4 to 6 letters");
            assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{word:?} must be a-z only");
        }
    }

    #[test]
    fn no_word_is_a_prefix_of_another() {
        for a in WORDS {
            for b in WORDS {
                assert!(a == b || !b.starts_with(a), "{a:?} is a prefix of {b:?}");
            }
        }
    }

    /// A spot check, not a proof: well-known homophone pairs must not both be in the list.
    #[test]
    fn no_known_homophone_pairs() {
        const PAIRS: &[(&str, &str)] = &[
            ("bare", "bear"),
            ("beach", "beech"),
            ("berry", "bury"),
            ("carat", "carrot"),
            ("cedar", "seeder"),
            ("cell", "sell"),
            ("choral", "coral"),
            ("dear", "deer"),
            ("fairy", "ferry"),
            ("flour", "flower"),
            ("hair", "hare"),
            ("heal", "heel"),
            ("hole", "whole"),
            ("knight", "night"),
            ("mail", "male"),
            ("meat", "meet"),
            ("medal", "meddle"),
            ("muscle", "mussel"),
            ("pair", "pear"),
            ("peace", "piece"),
            ("plain", "plane"),
            ("purl", "pearl"),
            ("rain", "reign"),
            ("road", "rode"),
            ("sail", "sale"),
            ("stair", "stare"),
            ("steal", "steel"),
            ("tail", "tale"),
            ("waist", "waste"),
            ("weak", "week"),
            ("whale", "wail"),
            ("yoke", "yolk"),
        ];
        for (a, b) in PAIRS {
            assert!(
                !(WORDS.contains(a) && WORDS.contains(b)),
                "{a:?} and {b:?} sound alike; keep at most one"
            );
        }
    }
}
