-- Deduplication keys are only needed within their window, and nothing deleted them: the table
-- grew by a row for every distinct trigger. The pruner deletes keys by age; a BRIN index finds
-- them without reading the whole table, and costs inserts next to nothing (keys are written in
-- time order, so each block range's summary rarely changes). Duplicates write nothing, and a key
-- taken again after its window is the only update of `accepted_at`.
CREATE INDEX journey_trigger_keys_accepted_at_idx ON journey_trigger_keys USING brin (accepted_at);
