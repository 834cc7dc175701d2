DROP TABLE relay_node;
