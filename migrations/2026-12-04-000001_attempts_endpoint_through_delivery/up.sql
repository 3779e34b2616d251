-- An attempt's endpoint is its delivery's endpoint, and an attempt goes when its delivery goes
-- (which goes with its endpoint): the column stays for the health queries' index, its foreign
-- key only checked, once more per attempt row, what the delivery's already guarantees.
ALTER TABLE webhook_attempts DROP CONSTRAINT webhook_attempts_endpoint_id_fkey;
