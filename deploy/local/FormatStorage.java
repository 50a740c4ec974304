// Formats the storage of several KRaft nodes in one JVM, for `kafka.sh cluster-up`: one
// StorageTool run per node would start a JVM each, and loading Kafka's classes is most of
// what formatting costs (3 nodes on a busy 2-core box: 3.5-3.9 s here, 8.8-9.2 s as three
// StorageTool JVMs side by side, measured in the same run).
// Run with Java's single-file source launcher and the broker's jars on the class path:
//   java -cp '<lib>/*' deploy/local/FormatStorage.java <cluster_id> <server.properties>...
// Same as `kafka-storage.sh format -t <cluster_id> -c <file> --ignore-formatted` per file
// (static quorum: no --standalone). Exit status: the first non-zero StorageTool status, or 0.

import kafka.tools.StorageTool;

public class FormatStorage {
    public static void main(String[] args) {
        if (args.length < 2) {
            System.err.println("usage: FormatStorage <cluster_id> <server.properties>...");
            System.exit(64);
        }
        for (int i = 1; i < args.length; i++) {
            String[] format = {"format", "-t", args[0], "-c", args[i], "--ignore-formatted"};
            int status = StorageTool.execute(format, System.err);
            if (status != 0) {
                System.exit(status);
            }
        }
        System.exit(0);
    }
}
