UPDATE event_types SET schema = '{"type": "object"}', example = '{}' WHERE builtin;
