//! Per-user post rates (governor's GCRA): a user who floods is refused with
//! `resource_exhausted` while every other user's posts go through.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Users remembered before idle ones are forgotten.
const USERS_REMEMBERED_MAX: usize = 100_000;

pub struct PostRates {
    /// None: no limit.
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl PostRates {
    /// `per_sec` posts a second per user, bursts of twice that; 0: no limit.
    pub fn new(per_sec: u32) -> PostRates {
        let limiter = NonZeroU32::new(per_sec).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"));
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        PostRates { limiter }
    }

    /// Takes one post of `user`'s allowance; false when they are over it.
    pub fn allow(&self, user: &str) -> bool {
        let Some(limiter) = &self.limiter else { return true };
        if limiter.len() > USERS_REMEMBERED_MAX {
            limiter.retain_recent();
        }
        limiter.check_key(&user.to_string()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::PostRates;

    #[test]
    fn a_flooding_user_is_stopped_and_others_are_not() {
        let rates = PostRates::new(5);
        let allowed = (0..100).filter(|_| rates.allow("mallory")).count();
        assert!((10..=12).contains(&allowed), "burst of 10, a few refills at most: {allowed}");
        assert!(rates.allow("alice"));
        let unlimited = PostRates::new(0);
        assert!((0..1000).all(|_| unlimited.allow("alice")));
    }
}
