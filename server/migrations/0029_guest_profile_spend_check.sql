-- A refund lowers a guest's spend without a visit (issue 23: server/counter/model.py,
-- fold_return), and may take back no points at all (returned lines that earned none). The
-- check that a profile is still the one a fold read (0023) compared only visits_total and
-- points_earned_12m, which such a refund leaves as they were: a two-statement guest sale
-- (0024) that read the profile before the refund committed would write back the spend from
-- before the refund. The fold now also sends the spend it read, as the key "spend_read" of
-- p_profile (server/counter/profiles.py, fold_stored), and it is compared too; the signature
-- stays, so pos_take_guest_sale (0024) calls this one unchanged. A profile without the key
-- (the code before this release, still serving while new pods start) is checked as before
-- (deploy/README.md, "expand, then contract"); the release after this one may require it.
CREATE OR REPLACE FUNCTION guest_profile_replace(
    p_guest_id uuid, p_visits_read integer, p_points_read bigint, p_profile jsonb
) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE guest_profiles p SET
        visits_total = f.visits_total, visits_30d = f.visits_30d,
        spend_total_minor = f.spend_total_minor, avg_ticket_minor = f.avg_ticket_minor,
        usual_weekday = f.usual_weekday, usual_hour = f.usual_hour,
        last_visit_at = f.last_visit_at, top_items = f.top_items,
        points_earned_12m = f.points_earned_12m, weekday_counts = f.weekday_counts,
        hour_counts = f.hour_counts, recent_visits = f.recent_visits, refreshed_at = now()
    FROM jsonb_to_record(p_profile)
         AS f(visits_total int, visits_30d int, spend_total_minor bigint,
              avg_ticket_minor int, usual_weekday smallint, usual_hour smallint,
              last_visit_at timestamptz, top_items jsonb, points_earned_12m bigint,
              weekday_counts int[], hour_counts int[], recent_visits timestamptz[],
              spend_read bigint)
    WHERE p.guest_id = p_guest_id AND p.visits_total = p_visits_read
      AND p.points_earned_12m = p_points_read
      AND (f.spend_read IS NULL OR p.spend_total_minor = f.spend_read);
    RETURN FOUND;
END;
$$;
