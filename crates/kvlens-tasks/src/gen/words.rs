//! Word lists and a prose generator for haystacks: plain sentences with no numbers in them,
//! so a number in the context is always a needle.

use super::rng::Rng;

/// The repeated filler of passkey retrieval (Mohtashami & Jaggi 2023), also RULER's "noise"
/// haystack for variable tracking.
pub const NOISE: [&str; 5] = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
];

pub const ADJECTIVES: &[&str] = &[
    "amber", "ancient", "brave", "bright", "calm", "clever", "crimson", "curious", "distant",
    "eager", "electric", "faint", "fierce", "gentle", "golden", "hollow", "humble", "icy", "jolly",
    "lively", "lonely", "lucky", "misty", "modest", "noble", "odd", "pale", "proud", "quiet",
    "rapid", "rustic", "scarlet", "shy", "silent", "silver", "sleepy", "smooth", "steady", "swift",
    "tender", "tiny", "velvet", "vivid", "wild", "wise", "witty", "young", "zealous",
];

pub const NOUNS: &[&str] = &[
    "anchor", "badger", "basket", "beacon", "canyon", "castle", "cedar", "comet", "compass",
    "cottage", "crystal", "dolphin", "engine", "falcon", "feather", "forest", "garden", "glacier",
    "harbor", "helmet", "island", "jungle", "kettle", "lantern", "lemon", "meadow", "mirror",
    "mountain", "needle", "orchard", "otter", "palace", "pepper", "pillow", "planet", "pebble",
    "quartz", "rabbit", "ribbon", "saddle", "spider", "statue", "thunder", "tiger", "tower",
    "trumpet", "valley", "violin", "walnut", "window", "wizard", "zebra",
];

const SUBJECTS: &[&str] = &[
    "the old farmer",
    "a young painter",
    "the village teacher",
    "the river",
    "a quiet library",
    "the morning train",
    "a small bakery",
    "the northern wind",
    "the city council",
    "an old sailor",
    "the school choir",
    "a travelling merchant",
    "the garden club",
    "the harbor master",
    "a curious child",
    "the mountain road",
    "the night market",
    "a careful engineer",
    "the museum guide",
    "the local newspaper",
];

const VERBS: &[&str] = &[
    "remembered",
    "described",
    "admired",
    "repaired",
    "followed",
    "painted",
    "visited",
    "ignored",
    "welcomed",
    "questioned",
    "carried",
    "watched",
    "praised",
    "studied",
    "borrowed",
    "discovered",
    "crossed",
    "protected",
    "explained",
    "imagined",
];

const OBJECTS: &[&str] = &[
    "the long summer evenings",
    "a forgotten song",
    "the edge of the forest",
    "the busy square",
    "an unusual letter",
    "the broken fence",
    "a field of sunflowers",
    "the harvest festival",
    "the narrow bridge",
    "a cup of warm tea",
    "the winter fog",
    "the patient horses",
    "a stack of old maps",
    "the quiet lake",
    "the first snowfall",
    "a basket of apples",
    "the lighthouse keeper",
    "the rolling hills",
    "a wooden boat",
    "the evening bells",
];

const ENDINGS: &[&str] = &[
    "before the sun went down",
    "while the rain kept falling",
    "without saying a word",
    "as everyone had expected",
    "for the rest of the afternoon",
    "with great care",
    "long after the others had left",
    "in the usual way",
    "despite the cold weather",
    "once again",
    "near the old mill",
    "during the long journey",
    "at the end of the day",
    "with a little help from friends",
    "just as the story says",
];

/// One sentence of filler prose.
pub fn sentence(rng: &mut Rng) -> String {
    let s = *rng.pick(SUBJECTS);
    let v = *rng.pick(VERBS);
    let o = *rng.pick(OBJECTS);
    let mut out = String::with_capacity(80);
    out.push_str(&s[..1].to_uppercase());
    out.push_str(&s[1..]);
    out.push(' ');
    out.push_str(v);
    out.push(' ');
    out.push_str(o);
    if rng.below(2) == 0 {
        out.push(' ');
        let ending: &&str = rng.pick(ENDINGS);
        out.push_str(ending);
    }
    out.push('.');
    out
}

/// A key such as `misty-harbor`, as RULER's needles use word pairs.
pub fn key(rng: &mut Rng) -> String {
    format!("{}-{}", rng.pick(ADJECTIVES), rng.pick(NOUNS))
}

pub const FIRST_NAMES: &[&str] = &[
    "Adela", "Bertram", "Calla", "Dorian", "Elowen", "Fabian", "Greta", "Hollis", "Ingrid",
    "Jasper", "Kestrel", "Linnea", "Magnus", "Nerys", "Osric", "Petra", "Quentin", "Rowena",
    "Silas", "Tamsin", "Ulric", "Verity", "Wendell", "Xenia", "Yorick", "Zelda",
];

pub const LAST_NAMES: &[&str] = &[
    "Ashdown",
    "Blackwood",
    "Carrow",
    "Dunmore",
    "Everly",
    "Fenwick",
    "Greyson",
    "Hartwell",
    "Ingram",
    "Juniper",
    "Kilbride",
    "Lockhart",
    "Marlow",
    "Northcott",
    "Oakes",
    "Pembrook",
    "Quill",
    "Ravensworth",
    "Stroud",
    "Thorne",
    "Underhill",
    "Vane",
    "Whitlock",
    "Yarrow",
];

pub const CITIES: &[&str] = &[
    "Aldermoor",
    "Brightwater",
    "Caskbridge",
    "Dunhaven",
    "Eastmere",
    "Farrowdale",
    "Glenhollow",
    "Highcliff",
    "Ironvale",
    "Juniper Bay",
    "Kingsreach",
    "Larkspur",
    "Millbrook",
    "Northwick",
    "Oakhurst",
    "Pinecrest",
    "Queensford",
    "Redmarsh",
    "Stonebridge",
    "Thornbury",
    "Umberlee",
    "Westholm",
];

pub const PROFESSIONS: &[&str] = &[
    "architect",
    "astronomer",
    "baker",
    "botanist",
    "cartographer",
    "chemist",
    "composer",
    "engineer",
    "geologist",
    "historian",
    "journalist",
    "librarian",
    "linguist",
    "mathematician",
    "painter",
    "pharmacist",
    "photographer",
    "sculptor",
    "surgeon",
    "watchmaker",
];

pub const INSTRUMENTS: &[&str] = &[
    "cello",
    "clarinet",
    "flute",
    "harp",
    "oboe",
    "piano",
    "trombone",
    "viola",
    "violin",
    "accordion",
    "banjo",
    "bassoon",
];

/// Words for common-word extraction: plain lowercase English words.
pub const CWE_WORDS: &[&str] = &[
    "apple", "bridge", "candle", "desert", "eagle", "fabric", "galaxy", "hammer", "igloo",
    "jacket", "kitten", "ladder", "magnet", "napkin", "ocean", "parrot", "quilt", "rocket",
    "saddle", "tablet", "umbrella", "velvet", "wagon", "yogurt", "zipper", "anchor", "button",
    "carpet", "dragon", "engine", "forest", "guitar", "helmet", "island", "jigsaw", "kettle",
    "lemon", "marble", "needle", "orange", "pencil", "rabbit", "salmon", "tomato", "violin",
    "walnut", "cactus", "donkey", "feather", "garlic", "hornet", "insect", "jungle", "koala",
    "lizard", "mango", "nickel", "olive", "pepper", "radish", "spider", "turnip", "vessel",
    "window", "barrel", "cobalt", "dinner", "falcon", "goblet", "harbor", "lantern", "meadow",
    "pillow", "ribbon", "shovel", "timber", "copper", "fossil", "glider", "muffin",
];
