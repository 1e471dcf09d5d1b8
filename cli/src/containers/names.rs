//! Container names: Docker's `adjective_surname` generator and the rules a
//! user-given name must follow.
//!
//! Docker draws from ~100 adjectives and ~240 notable scientists and
//! engineers; this is a shorter list in the same style. Uniqueness is checked
//! by the caller under the records lock (see `record.rs`); on a clash the
//! caller retries, and after a few clashes appends a digit, as Docker does.

use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "admiring", "adoring", "affectionate", "agitated", "amazing", "angry", "awesome", "beautiful", "blissful", "bold",
    "boring", "brave", "busy", "charming", "clever", "compassionate", "competent", "condescending", "confident",
    "cool", "cranky", "crazy", "dazzling", "determined", "distracted", "dreamy", "eager", "ecstatic", "elastic",
    "elated", "elegant", "eloquent", "epic", "exciting", "fervent", "festive", "flamboyant", "focused", "friendly",
    "frosty", "funny", "gallant", "gifted", "goofy", "gracious", "great", "happy", "hardcore", "heuristic", "hopeful",
    "hungry", "infallible", "inspiring", "intelligent", "interesting", "jolly", "jovial", "keen", "kind", "laughing",
    "loving", "lucid", "magical", "modest", "musing", "mystifying", "naughty", "nervous", "nice", "nifty", "nostalgic",
    "objective", "optimistic", "peaceful", "pedantic", "pensive", "practical", "priceless", "quirky", "quizzical",
    "recursing", "relaxed", "reverent", "romantic", "sad", "serene", "sharp", "silly", "sleepy", "stoic", "strange",
    "stupefied", "suspicious", "sweet", "tender", "thirsty", "trusting", "unruffled", "upbeat", "vibrant", "vigilant",
    "vigorous", "wizardly", "wonderful", "xenodochial", "youthful", "zealous", "zen",
];

const SURNAMES: &[&str] = &[
    "agnesi", "albattani", "allen", "almeida", "archimedes", "ardinghelli", "aryabhata", "austin", "babbage",
    "banach", "bardeen", "bartik", "bassi", "bell", "benz", "bhabha", "bhaskara", "blackwell", "bohr", "booth",
    "borg", "bose", "boyd", "brahmagupta", "brattain", "brown", "carson", "cerf", "chandrasekhar", "chaplygin",
    "chatelet", "chatterjee", "chebyshev", "clarke", "cohen", "colden", "cori", "cray", "curie", "darwin", "davinci",
    "diffie", "dijkstra", "dirac", "driscoll", "dubinsky", "easley", "edison", "einstein", "elion", "engelbart",
    "euclid", "euler", "faraday", "fermat", "fermi", "feynman", "franklin", "gagarin", "galileo", "gates", "gauss",
    "germain", "goldberg", "goldstine", "goldwasser", "goodall", "haibt", "hamilton", "hawking", "heisenberg",
    "hellman", "hermann", "herschel", "hertz", "hodgkin", "hofstadter", "hoover", "hopper", "hugle", "hypatia",
    "jackson", "jang", "jennings", "jepsen", "johnson", "joliot", "jones", "kalam", "kapitsa", "kare", "keldysh",
    "keller", "kepler", "khorana", "kilby", "kirch", "knuth", "kowalevski", "lalande", "lamarr", "lamport", "leakey",
    "leavitt", "lehmann", "lewin", "lichterman", "liskov", "lovelace", "lumiere", "mahavira", "margulis",
    "matsumoto", "maxwell", "mayer", "mccarthy", "mcclintock", "mclean", "mcnulty", "meitner", "mendel",
    "mendeleev", "merkle", "mestorf", "mirzakhani", "montalcini", "moore", "morse", "moser", "murdock", "napier",
    "nash", "neumann", "newton", "nightingale", "nobel", "noether", "northcutt", "noyce", "panini", "pare",
    "pascal", "pasteur", "payne", "perlman", "pike", "poincare", "poitras", "proskuriakova", "ptolemy", "raman",
    "ramanujan", "ride", "ritchie", "robinson", "roentgen", "rosalind", "rubin", "saha", "sammet", "sanderson",
    "satoshi", "shamir", "shannon", "shaw", "shirley", "shockley", "sinoussi", "snyder", "spence", "stonebraker",
    "sutherland", "swanson", "swartz", "swirles", "taussig", "tesla", "tharp", "thompson", "torvalds", "tu",
    "turing", "varahamihira", "vaughan", "villani", "visvesvaraya", "volhard", "wescoff", "wilbur", "wiles",
    "williams", "williamson", "wilson", "wing", "wozniak", "wright", "wu", "yalow", "yonath", "zhukovsky",
];

/// A random `adjective_surname`; with `retry > 0` a digit is appended
/// (`admiring_turing3`), like Docker's `GetRandomName(retry)`.
pub fn random_name(retry: u32) -> String {
    let mut rng = rand::rng();
    loop {
        let adjective = ADJECTIVES[rng.random_range(0..ADJECTIVES.len())];
        let surname = SURNAMES[rng.random_range(0..SURNAMES.len())];
        // Docker's one special case: Steve Wozniak is not boring.
        if adjective == "boring" && surname == "wozniak" {
            continue;
        }
        let mut name = format!("{adjective}_{surname}");
        if retry > 0 {
            name.push_str(&rng.random_range(0..10).to_string());
        }
        return name;
    }
}

/// Checks a user-given name against Docker's rule `[a-zA-Z0-9][a-zA-Z0-9_.-]+`
/// (a leading `/` is accepted and dropped). Returns the name without it.
pub fn validate(name: &str) -> Result<String, String> {
    let n = name.strip_prefix('/').unwrap_or(name);
    let mut chars = n.chars();
    let ok = n.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(n.to_string())
    } else {
        Err(format!("Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_are_valid() {
        for retry in 0..3 {
            let n = random_name(retry);
            assert!(validate(&n).is_ok(), "{n}");
            assert!(n.contains('_'));
        }
    }

    #[test]
    fn validation() {
        assert_eq!(validate("/web-1").as_deref(), Ok("web-1"));
        assert!(validate("a").is_err());
        assert!(validate("_x").is_err());
        assert!(validate("a b").is_err());
        assert!(validate("x/y").is_err());
    }
}
