s/^#define MLWQ_LAYOUT_ROW0 1 /#define MLWQ_LAYOUT_ROW0 0 /
