-- A change row that arrives merged (its first fact already names the merged patch set) makes its verifications
-- candidates: the store now does it once per batch for all the batch's merged changes (store.py), where the trigger
-- of version 4 ran for each such row — most of them new changes without any verification, at a cost the batch paid
-- per row. The trigger for a merge that becomes known or moves (changes_candidates_update) stays.
DROP TRIGGER changes_candidates_insert;
