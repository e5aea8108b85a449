-- A guest's folded profile written only if the row is still the one it was folded from
-- (issue 23): optimistic, for a statement that read the profile without locking it (a till's
-- one-statement sale, migration 0024). Every fold raises visits_total by one
-- (server/counter/model.py, fold_visit), and the tier recount (RECOUNT_TIER_POINTS) is the
-- only other writer and changes points_earned_12m: a row whose two are unchanged has not been
-- written since it was read. The columns are the ones UPDATE_PROFILES writes
-- (server/counter/sql.py). Returns false, writing nothing, when the row changed or is not there.
CREATE FUNCTION guest_profile_replace(
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
              weekday_counts int[], hour_counts int[], recent_visits timestamptz[])
    WHERE p.guest_id = p_guest_id AND p.visits_total = p_visits_read
      AND p.points_earned_12m = p_points_read;
    RETURN FOUND;
END;
$$;
