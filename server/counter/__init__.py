"""The counter: scanning guests, the guest card, counter accruals and redemptions, enrolment,
and the live pre-order queue of a location."""
