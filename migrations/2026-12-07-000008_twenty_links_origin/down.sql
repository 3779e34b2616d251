DROP TABLE IF EXISTS twenty_links_origin;
