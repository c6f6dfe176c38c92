-- A change row that arrives merged (its first fact already names the merged patch set) makes its verifications
-- candidates: the store now does it once per batch for the batch's merged changes new to the file (store.py), where
-- the trigger of version 4 ran for each such row, at a cost the batch paid per row. The trigger for a merge that
-- becomes known or moves on a known change (changes_candidates_update) stays.
DROP TRIGGER changes_candidates_insert;
