DROP TABLE topic_retained;
