// Command creditlink-interop calls a creditlink peer endpoint from Go, to show the contracts
// are not Python-only. It needs no generated Go code: it reads the message types from the
// descriptor set that `buf build` makes of contracts/proto, and invokes methods by name with
// dynamic messages over grpc-go with mutual TLS.
//
//	creditlink-interop -target 127.0.0.1:24151 -ca ca.crt -cert wuxi.crt -key wuxi.key \
//	    -server-name lists.suzhou.creditlink.local -descriptors peer.binpb -case check-organisation
//
// The server certificate is checked for -server-name, the <service>.<city>.creditlink.local
// name of the city and service dialled (docs/trust.md, "What a client checks"), whatever host
// -target names.
//
// It prints "PASS <case>" or "FAIL <case>: <reason>" and exits 1 on failure.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

const checkSubject = "/creditlink.peer.v1.CreditCheckService/CheckSubject"

func main() {
	target := flag.String("target", "", "host:port of the endpoint")
	caFile := flag.String("ca", "", "CA certificate (PEM)")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	serverName := flag.String("server-name", "lists.suzhou.creditlink.local", "name to verify in the server certificate: <service>.<city>.creditlink.local")
	descriptors := flag.String("descriptors", "", "FileDescriptorSet of contracts/proto (buf build)")
	subject := flag.String("subject", "L:91320500MA1W8XY409", "subject key to check")
	name := flag.String("case", "check-organisation", "check-organisation | person-without-consent")
	flag.Parse()

	if err := run(*target, *caFile, *certFile, *keyFile, *serverName, *descriptors, *subject, *name); err != nil {
		fmt.Printf("FAIL %s: %v\n", *name, err)
		os.Exit(1)
	}
	fmt.Printf("PASS %s\n", *name)
}

func run(target, caFile, certFile, keyFile, serverName, descriptors, subject, name string) error {
	files, err := loadDescriptors(descriptors)
	if err != nil {
		return err
	}
	conn, err := dial(target, caFile, certFile, keyFile, serverName)
	if err != nil {
		return err
	}
	defer conn.Close()
	request, err := newMessage(files, "creditlink.peer.v1.CheckSubjectRequest")
	if err != nil {
		return err
	}
	response, err := newMessage(files, "creditlink.peer.v1.CheckSubjectResponse")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()

	switch name {
	case "check-organisation":
		body := fmt.Sprintf(`{"subjectKey": %q, "scenario": "SCENARIO_TENDERING", "purpose": "go interop"}`, subject)
		if err := protojson.Unmarshal([]byte(body), request); err != nil {
			return err
		}
		if err := conn.Invoke(ctx, checkSubject, request, response); err != nil {
			return fmt.Errorf("CheckSubject: %w", err)
		}
		text, _ := protojson.Marshal(response)
		fmt.Printf("response %s\n", text)
		fields := response.Descriptor().Fields()
		if got := response.Get(fields.ByName("subject_key")).String(); got != subject {
			return fmt.Errorf("subject_key %q not echoed (got %q)", subject, got)
		}
		memberships := response.Get(fields.ByName("memberships")).List()
		for i := 0; i < memberships.Len(); i++ {
			entry := memberships.Get(i).Message()
			listType := entry.Get(entry.Descriptor().Fields().ByName("list_type")).Enum()
			enum := entry.Descriptor().Fields().ByName("list_type").Enum().Values().ByNumber(listType)
			fmt.Printf("membership %s\n", enum.Name())
		}
		return nil
	case "person-without-consent":
		body := `{"subjectKey": "N:` + fmt.Sprintf("%064d", 1) + `", "purpose": "go interop"}`
		if err := protojson.Unmarshal([]byte(body), request); err != nil {
			return err
		}
		var trailer metadata.MD
		err := conn.Invoke(ctx, checkSubject, request, response, grpc.Trailer(&trailer))
		if status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("expected PERMISSION_DENIED, got %v", err)
		}
		if denial := trailer.Get("creditlink-denial"); len(denial) != 1 || denial[0] != "consent-missing" {
			return fmt.Errorf("expected creditlink-denial consent-missing, got %v", denial)
		}
		return nil
	default:
		return errors.New("unknown case")
	}
}

func loadDescriptors(path string) (*protoregistry.Files, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	set := &descriptorpb.FileDescriptorSet{}
	if err := proto.Unmarshal(raw, set); err != nil {
		return nil, fmt.Errorf("descriptor set: %w", err)
	}
	return protodesc.NewFiles(set)
}

func newMessage(files *protoregistry.Files, name protoreflect.FullName) (*dynamicpb.Message, error) {
	descriptor, err := files.FindDescriptorByName(name)
	if err != nil {
		return nil, err
	}
	message, ok := descriptor.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a message", name)
	}
	return dynamicpb.NewMessage(message), nil
}

func dial(target, caFile, certFile, keyFile, serverName string) (*grpc.ClientConn, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, errors.New("no CA certificate in " + caFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	config := &tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{pair},
		ServerName:   serverName,
		MinVersion:   tls.VersionTLS12,
	}
	return grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(config)))
}
