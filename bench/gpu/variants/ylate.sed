s/^#define MLWQ_Y_EARLY 1 /#define MLWQ_Y_EARLY 0 /
