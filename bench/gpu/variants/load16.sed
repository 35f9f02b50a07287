s/^#define MLWQ_LOAD8 1 /#define MLWQ_LOAD8 0 /
