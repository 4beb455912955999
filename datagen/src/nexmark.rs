//! Nexmark events for `sluice produce --nexmark` and the benchmark's Nexmark queries.
//!
//! The Nexmark suite models an online auction: a stream of persons, auctions and bids, in
//! its generator's proportions (per 50 events: 1 person, 3 auctions, 46 bids), with its id
//! scheme (persons and auctions numbered from 1000, bids on recent auctions by recent
//! persons, "hot" auctions and bidders drawing half the bids), prices spread over six
//! orders of magnitude, its four channels, and an `extra` padding to its average event
//! sizes (person 200, auction 500 bytes; a bid's fields alone take about 180 bytes of
//! JSON, above the suite's 100, so bids get a short padding). Events are JSON in one flat shape whose
//! `event_type` (0 person, 1 auction, 2 bid) says which fields are set, so one table holds
//! the stream as in the suite's Flink and Spark setups; [`SCHEMA_YAML`] is its schema.
//! The values are drawn from a fixed hash of the event number, so a stream is
//! reproducible; they follow the suite's distributions, not its exact random sequence.

/// The source schema of a Nexmark topic, for a job spec's `source.kafka.schema`.
pub const SCHEMA_YAML: &str = "[{name: event_type, type: int32}, {name: id, type: int64}, \
{name: name, type: utf8}, {name: email_address, type: utf8}, {name: credit_card, type: utf8}, \
{name: city, type: utf8}, {name: state, type: utf8}, {name: item_name, type: utf8}, \
{name: description, type: utf8}, {name: initial_bid, type: int64}, {name: reserve, type: int64}, \
{name: expires, type: timestamp_ms}, {name: seller, type: int64}, {name: category, type: int64}, \
{name: auction, type: int64}, {name: bidder, type: int64}, {name: price, type: int64}, \
{name: channel, type: utf8}, {name: url, type: utf8}, {name: date_time, type: timestamp_ms}, \
{name: extra, type: utf8}]";

/// The suite's query q0 (pass-through of bids).
pub const Q0: &str =
    "SELECT auction, bidder, price, date_time, extra FROM source WHERE event_type = 2";
/// q1: bid prices converted from dollars to euros.
pub const Q1: &str = "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM source WHERE event_type = 2";
/// q2: bids on a sample of auctions.
pub const Q2: &str = "SELECT auction, price FROM source WHERE event_type = 2 AND auction % 123 = 0";

const PROPORTION_DENOMINATOR: u64 = 50;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const CATEGORIES: u64 = 5;
/// Bids go to one of the latest this many auctions, and come from this many latest persons.
const ACTIVE_AUCTIONS: u64 = 1000;
const ACTIVE_PEOPLE: u64 = 1000;
const CHANNELS: [&str; 4] = ["Apple", "Google", "Facebook", "Baidu"];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// The kind of event `seq` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

/// Event `seq`'s kind, by the suite's proportions.
pub fn kind(seq: u64) -> EventKind {
    match seq % PROPORTION_DENOMINATOR {
        o if o < PERSON_PROPORTION => EventKind::Person,
        o if o < PERSON_PROPORTION + AUCTION_PROPORTION => EventKind::Auction,
        _ => EventKind::Bid,
    }
}

/// Event `seq` as JSON, stamped `date_time_ms`.
pub fn event_json(seq: u64, date_time_ms: i64) -> String {
    let epoch = seq / PROPORTION_DENOMINATOR;
    let offset = seq % PROPORTION_DENOMINATOR;
    let mut random = Draws::new(seq);
    match kind(seq) {
        EventKind::Person => {
            let id = FIRST_PERSON_ID + epoch;
            let name = format!(
                "{} {}",
                FIRST_NAMES[random.below(FIRST_NAMES.len() as u64) as usize],
                LAST_NAMES[random.below(LAST_NAMES.len() as u64) as usize]
            );
            let email = format!("{}@{}.com", random.word(7), random.word(5));
            let card = (0..4)
                .map(|_| format!("{:04}", random.below(10_000)))
                .collect::<Vec<_>>()
                .join(" ");
            let city = US_CITIES[random.below(US_CITIES.len() as u64) as usize];
            let state = US_STATES[random.below(US_STATES.len() as u64) as usize];
            let json = format!(
                r#"{{"event_type":0,"id":{id},"name":"{name}","email_address":"{email}","credit_card":"{card}","city":"{city}","state":"{state}","date_time":{date_time_ms}"#
            );
            padded(json, 200, &mut random)
        }
        EventKind::Auction => {
            let id = FIRST_AUCTION_ID + epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION;
            let seller = FIRST_PERSON_ID + random.below(epoch + 1).min(epoch);
            let initial_bid = random.price();
            let reserve = initial_bid + random.price();
            let expires = date_time_ms + 1_000 * (10 + random.below(50)) as i64;
            let category = FIRST_CATEGORY_ID + random.below(CATEGORIES);
            let json = format!(
                r#"{{"event_type":1,"id":{id},"item_name":"{}","description":"{}","initial_bid":{initial_bid},"reserve":{reserve},"date_time":{date_time_ms},"expires":{expires},"seller":{seller},"category":{category}"#,
                random.word(20),
                random.word(100)
            );
            padded(json, 500, &mut random)
        }
        EventKind::Bid => {
            let auctions = (epoch + 1) * AUCTION_PROPORTION;
            let people = epoch + 1;
            // Half the bids go to a few hot auctions and come from a few hot bidders.
            let auction = FIRST_AUCTION_ID
                + if random.below(2) == 0 {
                    (auctions - 1) / 100 * 100
                } else {
                    auctions - 1 - random.below(auctions.min(ACTIVE_AUCTIONS))
                };
            let bidder = FIRST_PERSON_ID
                + if random.below(2) == 0 {
                    (people - 1) / 100 * 100
                } else {
                    people - 1 - random.below(people.min(ACTIVE_PEOPLE))
                };
            let price = random.price();
            let channel_index = random.below(CHANNELS.len() as u64) as usize;
            let channel = CHANNELS[channel_index];
            let url = format!(
                "https://www.nexmark.com/{}/{}/item.htm?query=1&channel_id={channel_index}",
                random.word(5),
                random.word(5)
            );
            let json = format!(
                r#"{{"event_type":2,"auction":{auction},"bidder":{bidder},"price":{price},"channel":"{channel}","url":"{url}","date_time":{date_time_ms}"#
            );
            padded(json, 100, &mut random)
        }
    }
}

/// `json` (an object without its closing brace) closed with an `extra` field of letters
/// that brings it to about `size` bytes, as the suite pads its events.
fn padded(json: String, size: usize, random: &mut Draws) -> String {
    let pad = size.saturating_sub(json.len() + 12).max(1);
    format!(r#"{json},"extra":"{}"}}"#, random.word(pad))
}

/// A reproducible stream of numbers for one event (splitmix64 over the event number).
struct Draws(u64);

impl Draws {
    fn new(seq: u64) -> Draws {
        Draws(seq.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A price in cents spread over six orders of magnitude, as the suite's.
    fn price(&mut self) -> u64 {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (10f64.powf(unit * 6.0) * 100.0).round() as u64
    }

    /// `len` lowercase letters.
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_has_the_suites_proportions_ids_and_sizes() {
        let events: Vec<serde_json::Value> = (0..5_000)
            .map(|seq| serde_json::from_str(&event_json(seq, 1_000)).unwrap())
            .collect();
        let count = |kind: i64| events.iter().filter(|e| e["event_type"] == kind).count();
        assert_eq!((count(0), count(1), count(2)), (100, 300, 4_600));
        // Bids name auctions and persons that exist by then.
        for (seq, event) in events.iter().enumerate() {
            if event["event_type"] == 2 {
                let epoch = seq as i64 / 50;
                let auction = event["auction"].as_i64().unwrap();
                let bidder = event["bidder"].as_i64().unwrap();
                assert!((1000..=1000 + epoch * 3 + 2).contains(&auction), "{event}");
                assert!((1000..=1000 + epoch).contains(&bidder), "{event}");
                assert!(event["price"].as_i64().unwrap() >= 100);
            }
        }
        let size = |seq: u64| event_json(seq, 1_000).len();
        assert!((150..=200).contains(&size(10)), "bid of {} bytes", size(10));
        assert!(
            (195..=210).contains(&size(0)),
            "person of {} bytes",
            size(0)
        );
        assert!(
            (495..=510).contains(&size(1)),
            "auction of {} bytes",
            size(1)
        );
        assert_eq!(event_json(77, 5), event_json(77, 5), "reproducible");
    }
}
